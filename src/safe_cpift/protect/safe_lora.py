"""Safe LoRA (Hsu et al., NeurIPS 2024): project a LoRA update onto the alignment subspace, layer by layer.

For every weight `W` that a LoRA adapter updates by `ΔW = s · B A` (`s` = PEFT's `lora_alpha / r`):

* `V = W_aligned − W_base`, the weight's alignment matrix;
* `C = V Vᵀ / ‖V‖_F`, the paper's cheap stand-in for the projection onto `V`'s column space;
* `cos = ⟨ΔW, C ΔW⟩_F / (‖ΔW‖_F ‖C ΔW‖_F)`, how well the update already lies in that subspace.

A layer whose `cos` is below the threshold τ gets `ΔW ← C ΔW` (as in the authors' code,
github.com/IBM/SafeLoRA `SafeLoRA.projected_weighted`: `lora_B ← C lora_B`); with `num_layers=k`,
the `k` layers of lowest `cos` are projected instead (the authors' `select_layers_type="number"`).
The other layers keep their update. Training-free and data-free: only the two checkpoints are read.

- `project_lora(peft_model, aligned, base, threshold=0.5)`: on a PEFT LoRA model, before merging.
- `safe_lora_projection(model, aligned, base, threshold=0.5)`: on a merged (or fully fine-tuned) model,
  with `ΔW = W − W_aligned` (equal to `s · B A` for a merged adapter, up to the merge's rounding).

`C ΔW` is never formed as an `out × out` matrix: `C B = V (Vᵀ B) / ‖V‖_F`, and the cosine of a
low-rank update comes from `r × r` Gram matrices, so the cost per layer is that of two thin matmuls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["project_lora", "safe_lora_projection", "select_layers", "weights_of"]


def weights_of(source: Any) -> Mapping[str, torch.Tensor]:
    """The state dict of a module, or `source` itself when it already is a mapping of tensors."""
    if isinstance(source, torch.nn.Module):
        return source.state_dict()
    return source


def _alignment(name: str, shape: torch.Size, aligned: Mapping[str, torch.Tensor],
               base: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, float] | None:
    """`(V, ‖V‖_F)` of weight `name`, or `None` when the alignment left it unchanged."""
    if name not in aligned or name not in base:
        raise ValueError(f"weight {name} is updated by the adapter but missing from `aligned` or `base`: pass the "
                         "model the adapter was trained on and the model before its alignment")
    a, b = aligned[name], base[name]
    if a.shape != shape or b.shape != shape:
        raise ValueError(f"weight {name} has shape {tuple(shape)} in the model but {tuple(a.shape)} / "
                         f"{tuple(b.shape)} in `aligned` / `base`: pass the models this one was tuned from")
    v = a.float() - b.float()
    norm = float(torch.linalg.vector_norm(v, dtype=torch.float64))
    return (v, norm) if norm > 0 else None


def select_layers(cosines: Mapping[str, float], threshold: float | None = 0.5,
                  num_layers: int | None = None) -> list[str]:
    """The layers Safe LoRA projects: cosine below `threshold`, or the `num_layers` lowest cosines.

    Args:
        cosines (`Mapping[str, float]`): each layer's similarity between `ΔW` and `C ΔW`.
        threshold (`float`, *optional*, defaults to `0.5`): τ; used when `num_layers` is `None`.
        num_layers (`int`, *optional*): project this many layers, those of lowest similarity.

    Returns:
        `list[str]`: the selected names, in the order of `cosines`.
    """
    if num_layers is not None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"`num_layers` must be an integer >= 0, got {num_layers!r}")
        chosen = set(sorted(cosines, key=lambda n: cosines[n])[:num_layers])
    else:
        if threshold is None:
            raise ValueError("pass `threshold` (Safe LoRA's τ) or `num_layers` (how many layers to project)")
        chosen = {n for n, c in cosines.items() if c < threshold}
    return [n for n in cosines if n in chosen]


def _lora_layers(model: torch.nn.Module, adapter: str) -> Iterator[tuple[str, Any]]:
    """`(weight name in the base model's state dict, LoRA layer)` for every layer carrying `adapter`."""
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = False
    for name, module in inner.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter in getattr(module, "lora_embedding_A", {}):
            raise ValueError(f"{name}: Safe LoRA projects linear layers; leave embeddings out of the adapter's "
                             "`target_modules`")
        if adapter not in module.lora_A:
            continue
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise ValueError(f"{name}: Safe LoRA projects plain LoRA updates; train without `use_dora`")
        if getattr(module, "fan_in_fan_out", False):
            raise ValueError(f"{name}: Safe LoRA's projection is defined for nn.Linear weights (out × in); "
                             "this layer stores its weight transposed (`fan_in_fan_out`)")
        found = True
        yield f"{name}.weight", module
    if not found:
        raise ValueError(f"the model has no LoRA layers of adapter `{adapter}`: pass the PEFT model before "
                         "`merge_and_unload()`, or use `safe_lora_projection` on a merged model")


def _gram_sum(x: torch.Tensor, gram_a: torch.Tensor) -> float:
    """`‖x A‖_F²` from `x` (m × r) and `A Aᵀ` (r × r), in float64."""
    x = x.double()
    return float(((x.T @ x) * gram_a).sum())


@torch.no_grad()
def project_lora(model: torch.nn.Module, aligned: Any, base: Any, *, threshold: float | None = 0.5,
                 num_layers: int | None = None, adapter: str = "default") -> dict[str, Any]:
    """Safe LoRA on a PEFT LoRA model: `lora_B ← C lora_B` in the layers whose update is far from the
    alignment subspace. Merge afterwards (`model.merge_and_unload()`) for a plain model.

    Args:
        model (`peft.PeftModel`): the LoRA-tuned model, changed in place.
        aligned, base (`nn.Module` or state dict): the model the adapter was trained on (the aligned
            model) and the same model before its alignment, with the base model's parameter names
            (`model.layers.0.self_attn.q_proj.weight`, ...).
        threshold (`float`, *optional*, defaults to `0.5`): τ; a layer whose similarity is below it is
            projected (the authors' code's default threshold).
        num_layers (`int`, *optional*): project the `num_layers` layers of lowest similarity instead.
        adapter (`str`, *optional*, defaults to `"default"`): which adapter of the model.

    Returns:
        `dict`: `projected` (weight names whose update was projected), `cosine` (per updated weight),
        `kept_norm` (per updated weight, `‖C ΔW‖_F / ‖ΔW‖_F`: how much of the update a projection keeps),
        `layers` (how many LoRA layers were judged), `skipped` (layers with no alignment change or no update).

    Raises:
        `ValueError`: the model has no LoRA layers, or an updated weight is missing / shaped differently in
        `aligned` or `base`.

    Example:
        ```python
        model = get_peft_model(aligned_model, LoraConfig(r=8, target_modules="all-linear"))
        ...  # train
        report = project_lora(model, aligned_state_dict, base_state_dict, threshold=0.5)
        model = model.merge_and_unload()
        ```
    """
    a, b = weights_of(aligned), weights_of(base)
    cosines: dict[str, float] = {}
    kept: dict[str, float] = {}
    pending: dict[str, tuple[Any, torch.Tensor]] = {}
    skipped = []
    for name, layer in _lora_layers(model, adapter):
        lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight  # r × in, out × r
        found = _alignment(name, layer.get_base_layer().weight.shape, a, b)
        if found is None or not bool(lora_b.any()) or not bool(lora_a.any()):
            skipped.append(name)
            continue
        v, norm = found
        bf = lora_b.float()
        gram_a = lora_a.double() @ lora_a.double().T
        cb = v @ (v.T @ bf) / norm  # C B, out × r
        # ⟨ΔW, CΔW⟩ = ‖Vᵀ B A‖² / ‖V‖_F ≥ 0, so the cosine lies in [0, 1]; PEFT's scaling cancels out
        inner = _gram_sum(v.T @ bf, gram_a) / norm
        before, after = _gram_sum(bf, gram_a), _gram_sum(cb, gram_a)
        cosines[name] = inner / (before * after) ** 0.5 if before * after > 0 else 1.0
        kept[name] = (after / before) ** 0.5 if before > 0 else 1.0
        pending[name] = (lora_b, cb)
    projected = select_layers(cosines, threshold, num_layers)
    for name in projected:
        lora_b, cb = pending[name]
        lora_b.copy_(cb.to(lora_b.dtype))
    logger.info("Safe LoRA: projected %d of %d LoRA layers (%s)", len(projected), len(cosines),
                f"{num_layers} lowest" if num_layers is not None else f"cosine < {threshold}")
    return {"projected": projected, "cosine": cosines, "kept_norm": kept, "layers": len(cosines), "skipped": skipped}


@torch.no_grad()
def safe_lora_projection(model: torch.nn.Module, aligned: Any, base: Any, threshold: float | None = 0.5,
                         num_layers: int | None = None) -> dict[str, Any]:
    """Safe LoRA's projection on a merged model: the update of each 2-D weight is `Δ = W − W_aligned`.

    For a merged LoRA adapter this is `project_lora` up to the merge's rounding; on a fully fine-tuned
    model it projects every changed matrix (Safe LoRA itself was defined for LoRA updates).

    Args:
        model (`torch.nn.Module`): the fine-tuned model (LoRA merged with `merge_and_unload()`), changed in place.
        aligned, base (`nn.Module` or state dict): the aligned model and the model before alignment.
        threshold (`float`, *optional*, defaults to `0.5`): a weight whose cosine between `Δ` and `C Δ`
            is below this is replaced by `W_aligned + C Δ` (Safe LoRA's similarity threshold τ).
        num_layers (`int`, *optional*): project the `num_layers` weights of lowest cosine instead.

    Returns:
        `dict`: `projected` (the weights replaced) and `cosine` per weight.
    """
    a, b = weights_of(aligned), weights_of(base)
    weights = model.state_dict()

    def update(name: str) -> tuple[torch.Tensor, torch.Tensor] | None:  # (Δ, C Δ), or None if nothing to judge
        w = weights[name]
        if w.dim() != 2 or name not in a or name not in b or not w.is_floating_point():
            return None
        delta = w.float() - a[name].float()
        found = _alignment(name, w.shape, a, b)
        if found is None or not bool(delta.any()):
            return None
        v, norm = found
        return delta, v @ (v.T @ delta) / norm

    cosines: dict[str, float] = {}
    for name in weights:  # first pass: similarities only (no projected copy of every weight is kept)
        pair = update(name)
        if pair is not None:
            delta, proj = (t.double() for t in pair)
            cosines[name] = float((delta * proj).sum() / (delta.norm() * proj.norm()).clamp_min(1e-300))
    projected = select_layers(cosines, threshold, num_layers)
    for name in projected:
        _, proj = update(name)  # type: ignore[misc]
        weights[name].copy_((a[name].float() + proj).to(weights[name].dtype))
    return {"projected": projected, "cosine": cosines}
