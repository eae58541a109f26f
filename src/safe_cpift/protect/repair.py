"""Post-hoc repair after fine-tuning: re-add the safety vector, or restore selected entries.

- `add_safety_vector(model, aligned, base, scale)` (RESTA, Bhardwaj et al. 2024): the safety vector
  is `θ_aligned − θ_base`; adding `scale ·` it to the fine-tuned weights pushes them back toward
  safety (RESTA: harmful 9.2% → 1.5% after full fine-tuning).
- `restore_entries(model, region, source)`: put the values of a region's entries (e.g. the safety
  core, or whole safety layers) back from the aligned model — the post-hoc cousin of freezing.
- `safe_lora_projection(model, aligned, base, threshold)` (Safe LoRA, Hsu et al. 2024) lives in
  `safe_cpift.protect.safe_lora` (with `project_lora` for PEFT models) and is re-exported here.
- `choose_scale(model, aligned, base, score, scales)`: try each scale on a copy, score it with a
  held-out probe (`score(model) -> (refusal, over_refusal, task)`), and keep the smallest scale that
  reaches the refusal target without raising over-refusal past its limit; the scores of every scale
  tried are returned, so the choice can be reported.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from safe_cpift.protect.safe_lora import safe_lora_projection, weights_of

__all__ = ["add_safety_vector", "choose_scale", "restore_entries", "safe_lora_projection"]

logger = logging.getLogger(__name__)

Scores = tuple[float, float, float]  # refusal, over-refusal, task score


@torch.no_grad()
def add_safety_vector(model: torch.nn.Module, aligned: Any, base: Any, scale: float) -> int:
    """`θ ← θ + scale · (θ_aligned − θ_base)` for every floating-point tensor the three share.

    A tied tensor (one storage under several names, e.g. Qwen2's or the tiny world's embedding and
    output layer) is changed once, under its first name.

    Args:
        model (`torch.nn.Module`): the fine-tuned model, changed in place.
        aligned, base (`nn.Module` or state dict): the aligned model and the model before alignment.
        scale (`float`): how much of the safety vector to add (0 changes nothing).

    Returns:
        `int`: tensors changed.

    Raises:
        `ValueError`: a shared tensor has different shapes in the three models.
    """
    from safe_cpift.models import drop_tied_aliases

    a, b = weights_of(aligned), weights_of(base)
    changed = 0
    for name, p in drop_tied_aliases(model.state_dict()).items():
        if name not in a or name not in b or not p.is_floating_point():
            continue
        if a[name].shape != p.shape or b[name].shape != p.shape:
            raise ValueError(f"tensor {name} has shape {tuple(p.shape)} in the model but {tuple(a[name].shape)} / "
                             f"{tuple(b[name].shape)} in `aligned` / `base`: pass the models this one was tuned from")
        p.add_((a[name].float() - b[name].float()).to(p.dtype), alpha=scale)
        changed += 1
    return changed


def restore_entries(model: torch.nn.Module, region: Any, source: Any) -> int:
    """Write `source`'s values of `region`'s entries into `model` (exact). Returns entries restored."""
    from safe_cpift.protect.freeze import restore_region

    restore_region(model, region, source)
    return int(region.num_selected)


def choose_scale(model: torch.nn.Module, aligned: Any, base: Any, score: Callable[[torch.nn.Module], Scores],
                 scales: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), *, min_refusal: float,
                 max_over_refusal: float) -> tuple[float, dict[float, Scores]]:
    """The smallest scale whose repaired copy refuses at least `min_refusal` with over-refusal at most
    `max_over_refusal` on the probe; when none does, the one with the best refusal − over-refusal.

    Returns:
        `(scale, {scale: (refusal, over_refusal, task)})` — `model` itself is not changed.
    """
    tried: dict[float, Scores] = {}
    for s in sorted(scales):
        candidate = copy.deepcopy(model)
        add_safety_vector(candidate, aligned, base, s)
        tried[s] = tuple(float(x) for x in score(candidate))  # type: ignore[assignment]
        del candidate
        refusal, over, _ = tried[s]
        if refusal >= min_refusal and over <= max_over_refusal:
            logger.info("repair scale %.3g reaches refusal %.3f (over-refusal %.3f)", s, refusal, over)
            return s, tried
    best = max(tried, key=lambda s: tried[s][0] - tried[s][1])
    logger.info("no repair scale reached refusal %.3f; best trade-off at %.3g", min_refusal, best)
    return best, tried
