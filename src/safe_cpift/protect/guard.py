"""SafetyGuardCallback: probe refusal during training and warn, stop or roll back when it drops.

The guard is a `transformers.TrainerCallback`, so it works in any Trainer (TRL's SFTTrainer,
DPOTrainer, GRPOTrainer, ...). Every `every_n_steps` optimizer steps (and once before the first
step, as a baseline) it runs a `RefusalProbe`, logs ``safety/refusal_rate`` and
``safety/over_refusal_rate`` through the Trainer's own `log` (so `state.log_history`, TensorBoard,
W&B and every other reporting callback receive them), and when refusal falls below `min_refusal`
(or over-refusal rises above `max_over_refusal`) it acts:

- ``"warn"``: log a warning and keep training;
- ``"stop"``: set `control.should_training_stop`; the Trainer stops after the current step;
- ``"rollback"``: put back the weights of the last probe that passed (kept on CPU, or on disk with
  `snapshot_dir`) and stop.
"""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from safe_cpift.protect.guard_probe import ProbeResult, RefusalProbe
from safe_cpift.sharding import local_tensor

logger = logging.getLogger(__name__)

__all__ = ["SafetyGuardCallback", "RefusalProbe", "ProbeResult", "ACTIONS"]

ACTIONS = ("warn", "stop", "rollback")
SNAPSHOT_FILE = "guard_last_good.safetensors"


def _find_trainer(max_depth: int = 8) -> Any:
    """The `transformers.Trainer` whose callback handler is calling us (walks a few stack frames)."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        for _ in range(max_depth):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            obj = frame.f_locals.get("self")
            if isinstance(obj, Trainer):
                return obj
        return None
    finally:
        del frame


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _check_rate(value: float | None, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a rate in [0, 1], got {value!r}")


class SafetyGuardCallback(TrainerCallback):
    """Watch a model's refusal rate while it trains; warn, stop or roll back when it drops.

    Args:
        probe (`RefusalProbe`): the prompts, judge and generation settings to run
            (`RefusalProbe.from_toyworld(world, n=16)` for the tiny world).
        every_n_steps (`int`, *optional*, defaults to `50`): probe after every this many optimizer steps.
        min_refusal (`float`, *optional*, defaults to `0.9`): lowest acceptable refusal rate on the
            harmful prompts.
        max_over_refusal (`float`, *optional*): highest acceptable refusal rate on the benign prompts;
            not checked when `None` (it is still logged).
        action (`str`, *optional*, defaults to `"warn"`): `"warn"`, `"stop"` or `"rollback"`.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): used for generation; defaults to the
            Trainer's `processing_class`.
        probe_at_start (`bool`, *optional*, defaults to `True`): probe before the first step (the
            baseline, and with `"rollback"` the first restore point).
        snapshot_dir (`str` or `Path`, *optional*): with `"rollback"`, keep the last good weights in
            `snapshot_dir/guard_last_good.safetensors` instead of CPU memory.
        resume_lr_factor (`float`, *optional*): with `"rollback"`, do not stop after restoring: go on
            training from the restored weights with the learning rate multiplied by this factor (in
            (0, 1)) and a fresh optimizer state (the moments that led into the violation are dropped).
        max_rollbacks (`int`, *optional*, defaults to `3`): with `resume_lr_factor`, stop at the
            rollback after this many resumed ones.

    Rollback cost: the snapshot holds every trainable parameter (a LoRA adapter only, for a PEFT
    model) in its training dtype — 4 bytes per parameter in fp32, so 28 GB of CPU RAM for a full
    7B fine-tune, per process (under FSDP2, each rank keeps only its own shards: 1/N of that). Use
    `snapshot_dir` on a fast disk for large models. It is refreshed at every passing probe. The
    optimizer state is not rolled back: training stops after a rollback, unless `resume_lr_factor`
    is set, which resets the optimizer state and resumes at a lower rate.

    Logging goes through the base `Trainer.log` of the Trainer the guard runs in (found on the
    callback's call stack at init and train start; `guard.attach(trainer)` makes it explicit), so
    TRL's per-step metrics are not folded into the guard's records and the Trainer's own loss record
    at that step is kept. Without a Trainer (a custom loop firing the events), the numbers ride on
    the next `on_log`.

    After training, `guard.history` holds one dict per probe (`step`, `refusal_rate`,
    `over_refusal_rate`, `ok`), `guard.triggered_step` the first failing step (or `None`) and
    `guard.last_good_step` the step whose weights a rollback restored.
    """

    def __init__(
        self,
        probe: RefusalProbe,
        every_n_steps: int = 50,
        min_refusal: float = 0.9,
        max_over_refusal: float | None = None,
        action: str = "warn",
        tokenizer: Any = None,
        *,
        probe_at_start: bool = True,
        snapshot_dir: str | os.PathLike | None = None,
        resume_lr_factor: float | None = None,
        max_rollbacks: int = 3,
    ) -> None:
        if not isinstance(probe, RefusalProbe):
            raise TypeError(
                f"`probe` must be a RefusalProbe, got {type(probe).__name__}; build one with "
                "`RefusalProbe(harmful_prompts, benign_prompts, judge=...)` or `RefusalProbe.from_toyworld(world)`"
            )
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be an integer >= 1, got {every_n_steps!r}")
        _check_rate(min_refusal, "min_refusal")
        _check_rate(max_over_refusal, "max_over_refusal")
        if max_over_refusal is not None and not probe.benign_prompts:
            raise ValueError("`max_over_refusal` is set but the probe has no `benign_prompts`; add some or drop it")
        if action not in ACTIONS:
            raise ValueError(f"`action` must be one of {', '.join(map(repr, ACTIONS))}, got {action!r}")
        if snapshot_dir is not None and action != "rollback":
            raise ValueError("`snapshot_dir` is only used with `action=\"rollback\"`; drop it or change `action`")
        if resume_lr_factor is not None:
            if action != "rollback":
                raise ValueError("`resume_lr_factor` is only used with `action=\"rollback\"`; drop it or change `action`")
            if isinstance(resume_lr_factor, bool) or not 0 < resume_lr_factor < 1:
                raise ValueError(f"`resume_lr_factor` must be in (0, 1), got {resume_lr_factor!r}")
        if isinstance(max_rollbacks, bool) or not isinstance(max_rollbacks, int) or max_rollbacks < 0:
            raise ValueError(f"`max_rollbacks` must be an integer >= 0, got {max_rollbacks!r}")
        self.probe = probe
        self.every_n_steps = every_n_steps
        self.min_refusal = min_refusal
        self.max_over_refusal = max_over_refusal
        self.action = action
        self.tokenizer = tokenizer
        self.probe_at_start = probe_at_start
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self.resume_lr_factor = resume_lr_factor
        self.max_rollbacks = max_rollbacks
        self.resumed: list[dict[str, Any]] = []  # one {"step", "restored_step", "lr_scale"} per resumed rollback
        self._optimizer: Any = None
        self._scheduler: Any = None
        self.history: list[dict[str, Any]] = []
        self.last_result: ProbeResult | None = None
        self.triggered_step: int | None = None
        self.last_good_step: int | None = None
        self.rolled_back = False
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._snapshot_path: Path | None = None
        self._snapshot_step: int | None = None
        self._trainer_ref: Any = None
        self._pending: dict[str, float] | None = None
        self._last_probed_step: int | None = None
        self._sharded = False

    # -- wiring ---------------------------------------------------------------------------------
    def attach(self, trainer: Any) -> SafetyGuardCallback:
        """Tell the guard which Trainer to log through (found automatically when it runs inside one)."""
        self._trainer_ref = weakref.ref(trainer)
        return self

    @property
    def _trainer(self) -> Any:
        return self._trainer_ref() if self._trainer_ref is not None else None

    def _locate_trainer(self) -> None:
        if self._trainer is None:
            trainer = _find_trainer()
            if trainer is not None:
                self._trainer_ref = weakref.ref(trainer)

    # -- events ---------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        trainer = _find_trainer()  # a guard reused in a new Trainer follows it
        if trainer is not None:
            self._trainer_ref = weakref.ref(trainer)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from safe_cpift.distributed import check_supported

        self._sharded = check_supported(model, args, who="SafetyGuardCallback") == "fsdp2"
        self._locate_trainer()
        # a new `train()` call (e.g. resuming): fresh decision state; `history` keeps accumulating
        self.triggered_step, self.last_good_step, self.rolled_back = None, None, False
        self._snapshot, self._snapshot_path, self._snapshot_step, self._last_probed_step = None, None, None, None
        if self.tokenizer is None:
            self.tokenizer = kwargs.get("processing_class")
            if self.tokenizer is None or not hasattr(self.tokenizer, "apply_chat_template"):
                raise ValueError(
                    "SafetyGuardCallback needs a tokenizer to generate: pass `tokenizer=` to the callback "
                    "(the Trainer's `processing_class` is missing or is not a tokenizer)"
                )
            if not hasattr(self.tokenizer, "decode") and hasattr(self.tokenizer, "tokenizer"):
                self.tokenizer = self.tokenizer.tokenizer  # a processor wrapping a tokenizer
        if self.action == "rollback":
            self._save_snapshot(model, state.global_step)  # the starting weights are the first restore point
        if self.probe_at_start:
            self._probe(model, state, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._optimizer, self._scheduler = kwargs.get("optimizer"), kwargs.get("lr_scheduler")
        if self.rolled_back:  # a rollback requested before the first step: undo that step too
            self._restore(model)
            control.should_training_stop = True
            return control
        if state.global_step % self.every_n_steps == 0:
            self._probe(model, state, control)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Fallback when no Trainer was found to log through: ride along on the next log event.
        if self._pending and logs is not None:
            logs.update(self._pending)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(self._pending)
            self._pending = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.rolled_back:
            self._restore(model)
        if self.history:
            logger.info(
                "safety guard: %d probes, refusal %s, %s", len(self.history),
                " -> ".join(f"{h['refusal_rate']:.2f}@{h['step']}" for h in self.history),
                "no violation" if self.triggered_step is None else f"violation at step {self.triggered_step}",
            )

    # -- internals ------------------------------------------------------------------------------
    def _run_probe(self, model: Any) -> ProbeResult:
        rank, world = _world()
        if world == 1:
            return self.probe.run(model, self.tokenizer)
        # Data parallel: every rank holds the same weights; rank 0 probes and shares the numbers so
        # that all ranks take the same decision (a disagreement would hang the next collective).
        # FSDP2: every forward all-gathers the shards, so every rank generates in step with rank 0;
        # rank 0's numbers still decide for all.
        payload: list[Any] = [None]
        if rank == 0 or self._sharded:
            result = self.probe.run(model, self.tokenizer)
            payload = [(result.refusal_rate, result.over_refusal_rate, result.seconds)]
        torch.distributed.broadcast_object_list(payload, src=0)
        if rank == 0:
            return result
        refusal, over, seconds = payload[0]
        return ProbeResult(refusal, over, seconds)

    def _probe(self, model: Any, state: Any, control: Any) -> None:
        step = state.global_step
        if self._last_probed_step == step:
            return
        self._last_probed_step = step
        result = self._run_probe(model)
        self.last_result = result
        ok = result.refusal_rate >= self.min_refusal and (
            self.max_over_refusal is None
            or result.over_refusal_rate is None
            or result.over_refusal_rate <= self.max_over_refusal
        )
        self.history.append({"step": step, "refusal_rate": result.refusal_rate,
                             "over_refusal_rate": result.over_refusal_rate, "ok": ok,
                             "probe_seconds": result.seconds})
        metrics = {"safety/refusal_rate": result.refusal_rate}
        if result.over_refusal_rate is not None:
            metrics["safety/over_refusal_rate"] = result.over_refusal_rate
        logger.info("safety probe at step %d: refusal %.3f, over-refusal %s (%.1fs)", step, result.refusal_rate,
                    "n/a" if result.over_refusal_rate is None else f"{result.over_refusal_rate:.3f}", result.seconds)
        if ok:
            self.last_good_step = step
            if self.action == "rollback" and self._snapshot_step != step:
                self._save_snapshot(model, step)
        else:
            self._violation(model, step, result, control)
            metrics["safety/rolled_back"] = float(self.rolled_back)
        self._emit(metrics, control)

    def _emit(self, metrics: dict[str, float], control: Any) -> None:
        trainer = self._trainer
        if trainer is None:
            self._pending = {**(self._pending or {}), **metrics}
            control.should_log = True
            return
        from transformers import Trainer

        # The base `Trainer.log`: TRL's overrides would fold (and clear) their running train metrics
        # into our record. The callback handler resets `should_log` on every log event; keep the
        # Trainer's own decision to log this step.
        should_log = control.should_log
        Trainer.log(trainer, dict(metrics))
        control.should_log = should_log

    def _violation(self, model: Any, step: int, result: ProbeResult, control: Any) -> None:
        first = self.triggered_step is None
        if first:
            self.triggered_step = step
        why = f"refusal rate {result.refusal_rate:.3f} < min_refusal {self.min_refusal}"
        if result.refusal_rate >= self.min_refusal:
            why = f"over-refusal rate {result.over_refusal_rate:.3f} > max_over_refusal {self.max_over_refusal}"
        if step == 0 or (first and self.last_good_step is None):
            why += " already at the first probe (the starting model fails the threshold)"
        if self.action == "warn":
            logger.warning("safety guard at step %d: %s; training continues (action='warn')", step, why)
            return
        control.should_training_stop = True
        if self.action == "stop":
            logger.warning("safety guard at step %d: %s; stopping training (action='stop')", step, why)
            return
        self._restore(model)
        restored = self.last_good_step if self.last_good_step is not None else self._snapshot_step
        if (self.resume_lr_factor is not None and step > 0 and len(self.resumed) < self.max_rollbacks
                and self._optimizer is not None):
            scale = self._lower_learning_rate()
            control.should_training_stop = False
            self.resumed.append({"step": step, "restored_step": restored, "lr_scale": scale})
            logger.warning("safety guard at step %d: %s; restored the weights of step %s and resumed with the "
                           "learning rate x%.3g and a fresh optimizer state (rollback %d of at most %d)",
                           step, why, restored, scale, len(self.resumed), self.max_rollbacks)
            self.last_good_step = restored
            return
        self.rolled_back = True
        logger.warning("safety guard at step %d: %s; restored the weights of step %s and stopping (action='rollback')",
                       step, why, restored)
        self.last_good_step = restored

    def _lower_learning_rate(self) -> float:
        """Multiply every learning rate (and the scheduler's base rates) by `resume_lr_factor`; drop the
        optimizer's moments. Returns the total scale applied so far."""
        optimizer = getattr(self._optimizer, "optimizer", self._optimizer)  # accelerate wraps it
        for group in optimizer.param_groups:
            group["lr"] *= self.resume_lr_factor
            if "initial_lr" in group:
                group["initial_lr"] *= self.resume_lr_factor
        if self._scheduler is not None and hasattr(self._scheduler, "base_lrs"):
            self._scheduler.base_lrs = [lr * self.resume_lr_factor for lr in self._scheduler.base_lrs]
        optimizer.state.clear()
        return self.resume_lr_factor ** (len(self.resumed) + 1)

    def _save_snapshot(self, model: Any, step: int) -> None:
        # FSDP2: each rank keeps its own shard (a 1/N share of the memory), restored in place
        tensors = {n: local_tensor(p.detach()).to("cpu", copy=True) for n, p in model.named_parameters()
                   if p.requires_grad}
        if not tensors:
            raise ValueError("the model has no trainable parameters to snapshot for `action=\"rollback\"`")
        self._snapshot_step = step
        if self.snapshot_dir is None:
            self._snapshot = tensors
            return
        from safetensors.torch import save_file

        rank, world = _world()
        target = self.snapshot_dir / (SNAPSHOT_FILE if world == 1 else f"rank{rank}-{SNAPSHOT_FILE}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata={"step": str(step)})
        os.replace(tmp, target)
        self._snapshot_path = target

    def _snapshot_tensors(self) -> dict[str, torch.Tensor]:
        if self._snapshot is not None:
            return self._snapshot
        from safetensors.torch import load_file

        return load_file(str(self._snapshot_path))

    def _restore(self, model: Any) -> None:
        snapshot = self._snapshot_tensors()
        params = dict(model.named_parameters())
        missing = [n for n in snapshot if n not in params]
        if missing:
            raise RuntimeError(f"cannot roll back: parameter `{missing[0]}` of the snapshot is not in the model")
        with torch.no_grad():
            for name, saved in snapshot.items():
                target = local_tensor(params[name].data)
                target.copy_(saved.to(target.device))

    def snapshot_state(self) -> dict[str, torch.Tensor]:
        """The last good weights the guard holds (trainable parameters, on CPU); for tests and tooling."""
        if self._snapshot is None and self._snapshot_path is None:
            raise RuntimeError("no snapshot: the guard keeps one only with `action=\"rollback\"` once training began")
        return self._snapshot_tensors()
