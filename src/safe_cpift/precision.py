"""Training precision: which dtype the weights live in, how updates reach them, and what it costs.

Pure-bfloat16 training with a plain AdamW loses most small updates: a bf16 weight has 8 bits of
mantissa, so a step smaller than half a unit in the last place rounds back to the old value. Two
modes keep the updates:

- ``bf16-mixed`` (the default whenever a recipe asks for bf16): float32 master weights, gradients
  and AdamW states, with bf16 autocast for the forward and backward passes (`SFTConfig(bf16=True)`).
  Every update lands in float32. Memory: 16 bytes per parameter (4 weights + 4 grads + 8 AdamW).
- ``bf16-sr``: bf16 weights and gradients, with torchao's AdamW whose states are bf16 and whose
  weight update is stochastically rounded (unbiased in expectation; `pip install safe-cpift[bf16]`).
  Memory: 8 bytes per parameter (2 + 2 + 4). For models that do not fit in ``bf16-mixed``.
- ``fp32``: float32 throughout, no autocast (CPU default). 16 bytes per parameter.

Activations come on top of these numbers and depend on batch size, sequence length and
activation checkpointing.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "BYTES_PER_PARAMETER", "resolve_precision", "load_dtype", "check_model_dtype",
           "precision_config", "memory_gib"]

PRECISIONS = ("fp32", "bf16-mixed", "bf16-sr")
# weights + gradients + AdamW states (exp_avg, exp_avg_sq), bytes per parameter
BYTES_PER_PARAMETER = {"fp32": 4 + 4 + 8, "bf16-mixed": 4 + 4 + 8, "bf16-sr": 2 + 2 + 4}
INSTALL_BF16 = "pip install 'safe-cpift[bf16]'  (torchao>=0.18)"


def resolve_precision(precision: str | None, config: dict[str, Any]) -> str:
    """The precision mode of a run: `precision` as given, or from the `SFTConfig` settings.

    `None`/``"auto"`: ``bf16-mixed`` when `config` asks for `bf16`, else ``fp32``.

    Raises:
        `ValueError` for an unknown mode, or ``bf16-sr`` together with `bf16: true` (the weights are
        already bf16 there; autocast would add nothing, so the setting would be silently dropped).
    """
    if precision in (None, "auto"):
        return "bf16-mixed" if config.get("bf16") else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of auto, {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16-sr" and config.get("bf16"):
        raise ValueError("`precision: bf16-sr` trains bf16 weights directly; remove `bf16: true` from the training "
                         "settings (or use `precision: bf16-mixed` for float32 master weights with bf16 autocast)")
    if precision == "bf16-sr" and config.get("optim") not in (None, "adamw_torch", "adamw_torch_fused"):
        raise ValueError(f"`precision: bf16-sr` brings its own optimizer (torchao AdamW with stochastic rounding); "
                         f"remove `optim: {config['optim']}` from the training settings")
    if precision == "bf16-mixed":
        config_bf16 = config.get("bf16")
        if config_bf16 is False:
            raise ValueError("`precision: bf16-mixed` needs bf16 autocast, but the training settings say `bf16: false`")
    return precision


def load_dtype(precision: str) -> torch.dtype:
    """The dtype to load trainable weights in: float32 master weights, or bf16 for ``bf16-sr``."""
    return torch.bfloat16 if precision == "bf16-sr" else torch.float32


def check_model_dtype(model: Any, precision: str) -> None:
    """Refuse a model whose trainable weights are not in the dtype `precision` trains.

    A bf16 model under ``fp32``/``bf16-mixed`` would be pure-bf16 training with a plain optimizer,
    which drops most small updates.
    """
    want = load_dtype(precision)
    wrong = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                    if p.requires_grad and p.is_floating_point() and p.dtype != want})
    if wrong:
        fix = ("load it with `dtype=torch.float32` (bf16 autocast still applies with `bf16=True`)"
               if want == torch.float32 else "load it with `dtype=torch.bfloat16`")
        raise ValueError(f"precision `{precision}` trains {str(want).removeprefix('torch.')} weights, but the model has "
                         f"{', '.join(wrong)} parameters: {fix}; pure-bf16 training with a plain AdamW drops most "
                         "small updates (see `safe_cpift.precision`)")


def bf16_sr_optimizer() -> tuple[type, dict[str, Any]]:
    """torchao's AdamW with bf16 stochastic rounding, as `(class, kwargs)` for `Trainer(optimizer_cls_and_kwargs=)`."""
    try:
        from torchao.optim import _AdamW  # torchao's documented entry point for bf16 stochastic rounding
    except ImportError as err:
        raise ImportError(f"`precision: bf16-sr` needs torchao's bf16 optimizer: {INSTALL_BF16}") from err
    return _AdamW, {"bf16_stochastic_round": True}


def precision_config(precision: str) -> dict[str, Any]:
    """`SFTConfig` settings a precision mode implies (only those it must set)."""
    if precision == "bf16-mixed":
        return {"bf16": True, "fp16": False}
    return {"bf16": False}


def memory_gib(num_parameters: float, precision: str) -> float:
    """Weights + gradients + AdamW states in GiB (activations not included)."""
    return num_parameters * BYTES_PER_PARAMETER[precision] / 2**30
