"""What a person sees while a run goes: one line per stage and one bar for the stage that trains.

The pipeline reports to an optional `StageObserver`; the library itself prints nothing (the CLI
passes `StagePrinter`). `headline(name, info)` picks the number that matters from a stage's summary.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

from transformers import TrainerCallback

__all__ = ["StageObserver", "StagePrinter", "TrainingBar", "headline"]


class StageObserver(Protocol):
    """Receives the run's stages as they start and finish."""

    def stage_started(self, name: str) -> None: ...

    def stage_finished(self, name: str, info: dict[str, Any], ran: bool) -> None: ...

    def training_callback(self, name: str) -> Any | None:
        """A `TrainerCallback` for the SFT of stage `name` (e.g. a progress bar), or `None`."""
        ...


def _rate(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"


def headline(name: str, info: dict[str, Any]) -> str:
    """The headline metric of a finished stage, from its `stage.json` summary."""
    metrics = info.get("metrics")
    if isinstance(metrics, dict):
        return (f"task mean {_rate(metrics.get('task_mean'))}, refusal {_rate(metrics.get('refusal_rate'))}, "
                f"over-refusal {_rate(metrics.get('over_refusal_rate'))}")
    train = info.get("train")
    if isinstance(train, dict):
        loss = train.get("final_loss")
        text = f"{train.get('examples_seen', 0)} examples" + ("" if loss is None else f", loss {loss:.3f}")
        if train.get("frozen_entries"):
            text += f", {train['frozen_entries']} entries frozen"
        return text
    if "groups" in info:
        return f"{len(info['groups'])} group(s) at tau {info.get('tau')}: " + "; ".join(
            "[" + ", ".join(g) + "]" for g in info["groups"])
    if isinstance(info.get("scores"), dict):
        return "alone: " + ", ".join(f"{t} {_rate(v)}" for t, v in info["scores"].items())
    if "entries" in info:
        return f"{info['entries']} core entries"
    if isinstance(info.get("tasks"), dict) and all(isinstance(v, dict) for v in info["tasks"].values()):
        return ", ".join(f"{t} {v.get('entries')}" for t, v in info["tasks"].items()) + " core entries"
    if "fusion_seconds" in info:
        return "cores transplanted, the rest SLERP-fused"
    if "intact" in info:
        return "safety core intact" if info["intact"] else "safety core NOT intact"
    return ""


class TrainingBar(TrainerCallback):
    """A progress bar over optimizer steps, labelled with the stage that trains."""

    def __init__(self, desc: str, stream: TextIO | None = None) -> None:
        self.desc = desc
        self.stream = stream
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, desc=f"  {self.desc}", unit="step", leave=False,
                        file=self.stream or sys.stderr, dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StagePrinter:
    """Prints `✓ stage  12.3s  headline` per stage (`·` for stages a resumed run skipped).

    Args:
        stream (`TextIO`, *optional*): where lines go (default: `sys.stderr`, so stdout stays for
            `--json` output).
        bars (`bool`, *optional*, defaults to `True`): a progress bar while a stage trains.
    """

    def __init__(self, stream: TextIO | None = None, bars: bool = True) -> None:
        self.stream = stream
        self.bars = bars

    def _out(self) -> TextIO:
        return self.stream or sys.stderr

    def line(self, text: str) -> None:
        print(text, file=self._out(), flush=True)

    def stage_started(self, name: str) -> None:
        pass

    def stage_finished(self, name: str, info: dict[str, Any], ran: bool) -> None:
        seconds = f"{info.get('stage_seconds', 0.0):7.1f}s" if ran else "   done"
        self.line(f"{'✓' if ran else '·'} {name:<28} {seconds}  {headline(name, info)}".rstrip())

    def training_callback(self, name: str) -> Any | None:
        return TrainingBar(name, self.stream) if self.bars else None
