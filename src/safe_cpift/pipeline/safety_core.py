"""The safety core: where safety lives in θ0, the values protected there, and the integrity check.

Stage `safety_core` (default scorer `update`): a short SFT on the safety data from the aligned model
θ0 (the *safety probe*), then the top-`safety_top_p` entries of |θ_safety − θ0|. Other scorers:
`alignment` (|θ0 − θ_base|, no training) and `importance` (|θ·∇L| on the safety data, no training).

The stage also stores the protected values themselves (`protected.safetensors`: for each tensor the
values at the core's flat indices), taken from `protect_source` (θ0 by default). `verify_safety_core`
compares a final model with these stored values bit for bit, so `intact` is checked, never assumed.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from safe_cpift.pipeline.common import REGION_DIR, RunContext, mix, train_and_save

logger = logging.getLogger(__name__)

STAGE = "safety_core"
PROTECTED_FILE = "protected.safetensors"
PROBE_DIR = "probe_model"


def run_safety_core(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `safety_core`: find the safety core and store its protected values."""
    from safe_cpift.regions import CoreRegion

    spec = ctx.spec
    seed = spec.stage_seed(STAGE)
    summary: dict[str, Any] = {"scorer": spec.safety_scorer, "top_p": spec.safety_top_p,
                               "scope": spec.safety_scope, "protect_source": spec.protect_source}
    probe = Path(tmp) / PROBE_DIR
    if spec.safety_scorer == "update":
        data, counts = mix(ctx, {}, spec.safety_probe_examples, seed)
        summary["train"] = train_and_save(ctx, spec.aligned_model, data, tmp, seed=seed, out_name=PROBE_DIR)
        summary["train"]["mix"] = counts
        region = CoreRegion.from_update(ctx.theta0(), probe, top_p=spec.safety_top_p,
                                        scope=spec.safety_scope, scorer="update", progress=False)
    elif spec.safety_scorer == "alignment":
        region = CoreRegion.from_update(spec.base_model, ctx.theta0(), top_p=spec.safety_top_p,
                                        scope=spec.safety_scope, scorer="alignment", progress=False)
    else:  # importance
        from safe_cpift.pipeline.common import load_model

        data, _ = mix(ctx, {}, spec.safety_probe_examples, seed)
        region = CoreRegion.from_importance(load_model(spec.aligned_model, spec, train=True), data, top_p=spec.safety_top_p,
                                            scope=spec.safety_scope, tokenizer=ctx.tokenizer(), progress=False)
    region.save(Path(tmp) / REGION_DIR)
    if spec.protect_source == "safety_probe":
        source = probe
        summary["protect_source_path"] = f"{STAGE}/{PROBE_DIR}"
    else:
        source = ctx.theta0()
        summary["protect_source_path"] = str(spec.aligned_model)
    save_protected_values(region, source, Path(tmp) / PROTECTED_FILE)
    if spec.protect_source != "safety_probe" and probe.exists():
        shutil.rmtree(probe)  # only its update mattered; a 7B probe is 28 GB of disk
    summary["entries"] = int(region.num_selected)
    summary["fraction"] = float(region.fraction)
    logger.info("safety core: %d entries (%.3f%% of weights)", region.num_selected, 100 * region.fraction)
    return summary


def protect_source_dir(ctx: RunContext) -> Any:
    """The model whose values the safety core keeps (θ0, or the safety probe)."""
    if ctx.spec.protect_source == "safety_probe":
        return ctx.stage_dir(STAGE) / PROBE_DIR
    return ctx.theta0()


def save_protected_values(region: Any, source: str | Path | Any, path: Path) -> None:
    """Store, per tensor of `region`, the values of `source` at the region's flat indices."""
    from safetensors.torch import save_file

    from safe_cpift.models import as_state_dict

    sd = as_state_dict(source)
    values = {}
    for name in region.names():
        idx = region.indices(name)
        if idx.numel():
            values[name] = sd[name].detach().reshape(-1)[idx].clone().contiguous()
    save_file(values, str(path), metadata={"format": "safe-cpift-protected/1"})


def verify_safety_core(model: Any, region: Any, protected: str | Path | dict[str, torch.Tensor]) -> dict[str, Any]:
    """Check, bit for bit, that every safety-core entry of `model` equals its protected value.

    Like is compared with like: the model's entries are cast to the protected values' dtype, and an
    entry counts as unchanged only when that cast is lossless (casting back gives the same bits) and
    its bits equal the protected value's. So a float32 model holding the exact bf16 protected values
    is intact, while a change too small to survive rounding to bf16 is still a change.

    Args:
        model: a model, state dict or checkpoint directory.
        region (`CoreRegion`): the safety core.
        protected (`str`, `Path` or `dict`): `protected.safetensors` (or its tensors) from
            `save_protected_values`.

    Returns:
        `dict`: `intact` (`bool`), `entries` (checked), `mismatched` (count), `first_mismatch`
        (tensor name or `None`), `compared_dtypes` (`{"model": [...], "protected": [...]}`).
    """
    from safetensors.torch import load_file

    from safe_cpift.models import as_state_dict

    stored = load_file(str(protected)) if isinstance(protected, (str, Path)) else protected
    sd = as_state_dict(model)
    checked = mismatched = 0
    first = None
    model_dtypes, protected_dtypes = set(), set()
    for name in region.names():
        idx = region.indices(name)
        if not idx.numel():
            continue
        if name not in stored or name not in sd:
            raise ValueError(f"tensor `{name}` of the safety core is missing from the model or the protected values")
        now = sd[name].detach().reshape(-1)[idx]
        ref = stored[name]
        model_dtypes.add(str(now.dtype).removeprefix("torch."))
        protected_dtypes.add(str(ref.dtype).removeprefix("torch."))
        if now.shape != ref.shape:
            bad = int(idx.numel())
        else:
            bad = int((~_same_bits(now, ref)).sum())
        checked += int(idx.numel())
        if bad:
            mismatched += bad
            first = first or name
    return {"intact": mismatched == 0 and checked == region.num_selected, "entries": checked,
            "mismatched": mismatched, "first_mismatch": first,
            "compared_dtypes": {"model": sorted(model_dtypes), "protected": sorted(protected_dtypes)}}


def _same_bits(now: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per entry: `now`, cast to `ref`'s dtype without loss, has `ref`'s bit pattern (-0.0 vs 0.0 and NaN
    payloads count as changes)."""
    cast = now.to(ref.dtype)
    same = cast.view(_int_view(ref.dtype)) == ref.view(_int_view(ref.dtype))
    if now.dtype != ref.dtype:
        back = cast.to(now.dtype)
        same &= back.view(_int_view(now.dtype)) == now.view(_int_view(now.dtype))
    return same


def _int_view(dtype: torch.dtype) -> torch.dtype:
    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.empty((), dtype=dtype).element_size()]
