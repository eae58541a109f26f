"""Which multi-process training setups the safe-cpift callbacks support, and a clear refusal otherwise.

Entry-exact freezing (`CoreFreezeCallback`) and rollback (`SafetyGuardCallback`) read and write
whole parameter tensors by flat index. That is exact when every process holds the full tensors:

- one process (CPU, one GPU, `device_map` across GPUs in one process);
- data parallel (DDP) through `torchrun` or `accelerate launch` (every rank holds a full replica,
  gradients are averaged, each rank applies the same update, so each rank restores the same entries).

Sharded parameters are refused: FSDP (v1 flat parameters or v2 DTensors) and DeepSpeed (ZeRO
keeps the optimizer's fp32 master weights in partitions the callbacks cannot see; ZeRO-3 also
shards the parameters). `check_supported` raises a `ValueError` saying so before the first step.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["SUPPORTED", "detect_parallelism", "check_supported"]

SUPPORTED = ("single", "ddp")
_TRUE = ("1", "true", "yes")


def _enabled(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none")
    if isinstance(value, (list, tuple, dict, set)):
        return len(value) > 0
    return bool(value)


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _model_sharding(model: Any) -> str | None:
    """`"fsdp"`/`"deepspeed"`/`"dtensor"` when the model's parameters are sharded or wrapped so, else `None`."""
    if model is None or not isinstance(model, torch.nn.Module):
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without distributed
        FullyShardedDataParallel = ()  # type: ignore[assignment]  # noqa: N806
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        FSDPModule = ()  # type: ignore[assignment]  # noqa: N806
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()  # type: ignore[assignment]  # noqa: N806
    for module in model.modules():
        if (FullyShardedDataParallel and isinstance(module, FullyShardedDataParallel)) or (
            FSDPModule and isinstance(module, FSDPModule)
        ):
            return "fsdp"
        if type(module).__name__ == "DeepSpeedEngine":
            return "deepspeed"
    for param in model.parameters():
        if hasattr(param, "ds_id") or hasattr(param, "ds_status"):
            return "deepspeed"
        if getattr(param, "_is_flat_param", False) or type(param).__name__ == "FlatParameter":
            return "fsdp"
        if DTensor and isinstance(param, DTensor):
            return "dtensor"
    return None


def detect_parallelism(model: Any = None, args: Any = None) -> str:
    """Name the training setup: `"single"`, `"ddp"`, `"fsdp"`, `"deepspeed"` or `"dtensor"`.

    Args:
        model (`torch.nn.Module`, *optional*): the model the Trainer hands to callbacks.
        args (`TrainingArguments`, *optional*): the Trainer's arguments (`fsdp`, `deepspeed`).

    Looks at, in order: the Trainer arguments, the environment `accelerate launch` sets
    (`ACCELERATE_USE_FSDP`, `ACCELERATE_USE_DEEPSPEED`), and the model's modules and parameters.
    """
    if args is not None:
        if _enabled(getattr(args, "deepspeed", None)):
            return "deepspeed"
        if _enabled(getattr(args, "fsdp", None)):
            return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in _TRUE:
        return "deepspeed"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE:
        return "fsdp"
    sharded = _model_sharding(model)
    if sharded is not None:
        return sharded
    return "ddp" if _world_size() > 1 else "single"


_WHY = {
    "fsdp": "FSDP shards each parameter across ranks (flat parameters or DTensors), so a rank cannot restore "
            "entries it does not hold",
    "dtensor": "the model's parameters are DTensors (FSDP2 / tensor parallel), sharded across ranks",
    "deepspeed": "DeepSpeed ZeRO keeps the optimizer's master weights in partitions outside the model "
                 "(and ZeRO-3 shards the parameters), so restoring the model's copy is not exact",
}


def check_supported(model: Any = None, args: Any = None, *, who: str = "CoreFreezeCallback") -> str:
    """Raise a clear `ValueError` unless the training setup is one the callbacks support exactly.

    Args:
        model (`torch.nn.Module`, *optional*): the model the Trainer hands to callbacks.
        args (`TrainingArguments`, *optional*): the Trainer's arguments.
        who (`str`, *optional*): the caller's name, for the message.

    Returns:
        `str`: `"single"` or `"ddp"`.

    Raises:
        `ValueError`: under FSDP, DeepSpeed or DTensor-sharded parameters, naming the setup and the fix.
    """
    mode = detect_parallelism(model, args)
    if mode in SUPPORTED:
        return mode
    raise ValueError(
        f"{who} does not support {mode.upper() if mode != 'dtensor' else 'DTensor-sharded'} training: {_WHY[mode]}. "
        "Supported: one process, or data parallel (DDP) with `torchrun --nproc_per_node N` / "
        "`accelerate launch --num_processes N` without FSDP or DeepSpeed (see docs/distributed.md). "
        "For models too large for one device per rank, use LoRA (`peft_config=`) under DDP and "
        "`restore_region` after `merge_and_unload()`."
    )
