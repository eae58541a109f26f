"""Protections that act on the gradient just before each optimizer step, in any Trainer.

`GradientProtection` is a `TrainerCallback` whose `on_pre_optimizer_step` (after the Trainer's
backward passes and clipping, before `optimizer.step()`) may add an extra gradient or change the
task gradient. It works the same under SFTTrainer, DPOTrainer and GRPOTrainer because it never
touches the Trainer's loss. What it did is logged under `protect/<name>/...` keys in the Trainer's
logs, and its extra wall time is measured (`seconds`).

Supported: one process, DDP (every rank holds the whole averaged gradient) and FSDP2 (each rank
adjusts its own dim-0 shard of the gradient; dot products and norms are summed over ranks with
`safe_cpift.sharding`, so every rank computes the numbers one process would). Refused: DeepSpeed
ZeRO-1/2 (the engine steps before this hook and keeps its gradients out of `param.grad`) and every
setup `safe_cpift.distributed.check_supported` refuses.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's trainable parameters, in a fixed order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


class GradientProtection(TrainerCallback):
    """Base class: subclasses implement `adjust(model, step) -> dict[str, float]` (values to log).

    Args:
        every (`int`, *optional*, defaults to `1`): act on every `every`-th optimizer step.
    """

    name = "gradient"

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"`every` must be >= 1, got {every}")
        self.every = every
        self.seconds = 0.0
        self.calls = 0
        self.last: dict[str, float] = {}

    def adjust(self, model: Any, step: int) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        from safe_cpift.distributed import check_supported

        who = type(self).__name__
        if check_supported(model, args, who=who) == "zero12":
            raise ValueError(
                f"{who} does not support DeepSpeed ZeRO-1/2 training: under a Trainer, accelerate's DeepSpeed "
                "wrapper runs the engine's optimizer step inside `backward`, before any `on_pre_optimizer_step` "
                "callback, and ZeRO moves the reduced gradients out of `param.grad` into its own partitions, so "
                "there is no gradient left to adjust. Use FSDP2 (accelerate's FSDP plugin with `fsdp_version: 2`) "
                "or DDP for this protection; under ZeRO-1/2 the frozen core (CoreFreezeCallback) and the guard "
                "work (docs/distributed.md)"
            )

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is None or state.global_step % self.every:
            return
        start = time.perf_counter()
        self.last = self.adjust(model, state.global_step)
        self.seconds += time.perf_counter() - start
        self.calls += 1

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None or not self.last:
            return
        values = {f"protect/{self.name}/{k}": float(v) for k, v in self.last.items()}
        logs.update(values)  # for reporting callbacks after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # the Trainer copied `logs` into its history already

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        logger.info("%s: %d calls, %.2fs extra", self.name, self.calls, self.seconds)
