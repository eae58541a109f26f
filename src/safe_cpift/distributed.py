"""Which multi-process training setups the safe-cpift callbacks support, and a clear refusal otherwise.

Entry-exact freezing (`CoreFreezeCallback`) and rollback (`SafetyGuardCallback`) read and write
parameter entries by flat index. That is exact when each process can name the entries it holds:

- one process (CPU, one GPU, `device_map` across GPUs in one process);
- data parallel (DDP) through `torchrun` or `accelerate launch` (every rank holds a full replica);
- FSDP2 (`fully_shard`, or accelerate's FSDP plugin with `fsdp_version: 2`): parameters are
  DTensors sharded on dim 0 over a 1-D mesh, so each rank restores the entries of its own rows
  (`safe_cpift.sharding`).

- DeepSpeed ZeRO-1/2: parameters stay whole on every rank; the optimizer's fp32 master copy is
  partitioned, so freezing also writes the frozen values into this rank's master partition.

Refused, with the reason and the way: FSDP1 (flat parameters mix tensors in one buffer; use
`fsdp_version: 2`), DeepSpeed ZeRO-3 (partitioned parameters; use FSDP2), and DTensors laid out
other than FSDP2 does (tensor parallel, HSDP). `check_supported` raises a `ValueError` before the
first step.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["SUPPORTED", "detect_parallelism", "check_supported"]

SUPPORTED = ("single", "ddp", "fsdp2", "zero12")
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
    """`"fsdp"` (v1) / `"fsdp2"` / `"deepspeed"` / `"dtensor"` (other layouts) from the model itself, else `None`."""
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
        if FullyShardedDataParallel and isinstance(module, FullyShardedDataParallel):
            return "fsdp"
        if type(module).__name__ == "DeepSpeedEngine":
            return "deepspeed"
    for param in model.parameters():
        if hasattr(param, "ds_id") or hasattr(param, "ds_status"):
            return "deepspeed"  # ZeRO-3: partitioned parameters
        if hasattr(param, "_hp_mapping"):
            return "zero12"  # ZeRO-1/2: whole parameters, fp32 master partitions in the optimizer
        if getattr(param, "_is_flat_param", False) or type(param).__name__ == "FlatParameter":
            return "fsdp"
        if DTensor and isinstance(param, DTensor):
            from safe_cpift.sharding import shard_placement_problem

            return "dtensor" if shard_placement_problem(param) else "fsdp2"
    if FSDPModule and any(isinstance(m, FSDPModule) for m in model.modules()):
        return "fsdp2"
    return None


def _fsdp_version(args: Any) -> int:
    """The FSDP version the Trainer arguments or `accelerate launch` ask for (1 when unsaid, as accelerate)."""
    for source in (getattr(args, "fsdp_config", None), getattr(args, "fsdp_plugin_args", None)):
        if isinstance(source, dict):
            for key in ("version", "fsdp_version"):
                if source.get(key) is not None:
                    return int(source[key])
    return int(os.environ.get("FSDP_VERSION", "1") or 1)


def _zero_stage(args: Any) -> int | None:
    """The ZeRO stage of the DeepSpeed config in the Trainer arguments or the accelerate environment (None: unknown)."""
    config = getattr(args, "deepspeed", None) if args is not None else None
    if isinstance(config, (str, os.PathLike)) and os.path.isfile(config):
        import json

        try:
            config = json.loads(open(config, encoding="utf-8").read())  # noqa: SIM115 - read once
        except (OSError, ValueError):
            config = None
    stage = config.get("zero_optimization", {}).get("stage") if isinstance(config, dict) else None
    if stage is None:
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    try:
        return int(stage) if stage is not None else None
    except ValueError:  # "auto"
        return None


def detect_parallelism(model: Any = None, args: Any = None) -> str:
    """Name the setup: `"single"`, `"ddp"`, `"fsdp2"`, `"zero12"`, `"fsdp"` (v1), `"deepspeed"` (ZeRO-3) or `"dtensor"`.

    Args:
        model (`torch.nn.Module`, *optional*): the model the Trainer hands to callbacks.
        args (`TrainingArguments`, *optional*): the Trainer's arguments (`fsdp`, `fsdp_config`, `deepspeed`).

    The model's own parameters decide first (FSDP1 wrappers, DTensors and their layout, DeepSpeed
    attributes); then the Trainer arguments and the environment `accelerate launch` sets
    (`ACCELERATE_USE_FSDP` with `FSDP_VERSION`, `ACCELERATE_USE_DEEPSPEED`).
    """
    sharded = _model_sharding(model)
    if sharded is not None:
        return sharded
    if (args is not None and _enabled(getattr(args, "deepspeed", None))) or (
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in _TRUE
    ):
        return "zero12" if _zero_stage(args) in (0, 1, 2) else "deepspeed"
    if (args is not None and _enabled(getattr(args, "fsdp", None))) or (
        os.environ.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE
    ):
        if _fsdp_version(args) != 2:
            return "fsdp"
        # asked for FSDP2; a model that is not (yet) sharded holds whole tensors, which is exact too
        return "fsdp2" if model is None else ("ddp" if _world_size() > 1 else "single")
    return "ddp" if _world_size() > 1 else "single"


_WHY = {
    "fsdp": "FSDP1 flattens each wrapped module's parameters into one buffer split across ranks, so entries "
            "of a tensor cannot be named by flat index on a rank. Use FSDP2 instead: `fsdp_config={'version': 2}` "
            "in the Trainer arguments, `fsdp_version: 2` in the accelerate config, or `fully_shard`",
    "dtensor": "the model's parameters are DTensors laid out other than FSDP2's dim-0 sharding over a 1-D mesh "
               "(tensor parallel, HSDP). Use FSDP2 (`fully_shard` on a 1-D mesh, or accelerate's FSDP plugin "
               "with `fsdp_version: 2`)",
    "deepspeed": "DeepSpeed ZeRO-3 partitions the parameters themselves into flat buffers outside the modules "
                 "(or the ZeRO stage could not be read from the config), so a rank cannot name the entries it "
                 "holds. ZeRO-1/2 are supported; for sharded parameters use FSDP2 instead: accelerate's FSDP "
                 "plugin with `fsdp_version: 2` (or `fsdp_config={'version': 2}` in the Trainer arguments)",
}


def check_supported(model: Any = None, args: Any = None, *, who: str = "CoreFreezeCallback") -> str:
    """Raise a clear `ValueError` unless the training setup is one the callbacks support exactly.

    Args:
        model (`torch.nn.Module`, *optional*): the model the Trainer hands to callbacks.
        args (`TrainingArguments`, *optional*): the Trainer's arguments.
        who (`str`, *optional*): the caller's name, for the message.

    Returns:
        `str`: `"single"`, `"ddp"`, `"fsdp2"` or `"zero12"` (DeepSpeed ZeRO-1/2).

    Raises:
        `ValueError`: under FSDP1, DeepSpeed or DTensors not laid out as FSDP2, naming the setup, why,
            and FSDP2 as the way.
    """
    mode = detect_parallelism(model, args)
    if mode in SUPPORTED:
        return mode
    label = {"dtensor": "DTensor-sharded", "fsdp": "FSDP1", "deepspeed": "DeepSpeed ZeRO-3"}[mode]
    raise ValueError(
        f"{who} does not support {label} training: {_WHY[mode]}. "
        "Supported: one process, data parallel (DDP) with `torchrun --nproc_per_node N` / "
        "`accelerate launch --num_processes N`, FSDP2 and DeepSpeed ZeRO-1/2 (see docs/distributed.md)."
    )
