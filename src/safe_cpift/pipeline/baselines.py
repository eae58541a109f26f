"""The SFT baselines and the training budget they are given.

Every SFT baseline trains on the same total number of examples as `safe_cpift` (its probes plus its
pipelined stages) by default; see `safe_cpift.pipeline.budget`.

* `multitask_sft`: one epoch over a balanced mix of all tasks.
* `sequential_sft` (`sequential_sft_<i>_<task>` stages): the tasks one after another, each from the
  previous model, the total split evenly.
* `safety_mix_sft`: like `multitask_sft` but `safety_mix` of the examples are safety examples.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safe_cpift.pipeline.common import RunContext, mix, split_evenly, train_and_save

logger = logging.getLogger(__name__)

MULTITASK = "multitask_sft"
SAFETY_MIX = "safety_mix_sft"


def sequential_stages(ctx: RunContext) -> list[str]:
    return [f"sequential_sft_{i}_{t}" for i, t in enumerate(ctx.spec.task_names)]


def cost_stages(ctx: RunContext, method: str) -> list[str]:
    """The stages whose training `method` pays for (CPI-FT methods pay for their probes too)."""
    from safe_cpift.pipeline.fusion_stage import group_stages
    from safe_cpift.pipeline.probes import probe_stage

    if method in (MULTITASK, SAFETY_MIX, "sppft"):
        return [method]
    if method == "resta":  # multitask_sft's training; the repair itself trains nothing
        return [MULTITASK]
    if method in ("lora_sft", "safe_lora"):  # safe_lora projects lora_sft's adapters: no training of its own
        return ["lora_sft"]
    if method == "protected_sft":  # it freezes safe_cpift's safety core, so it pays for the safety probe too
        return ["safety_core", "protected_sft"]
    if method == "sequential_sft":
        return sequential_stages(ctx)
    probes = [probe_stage(t) for t in ctx.spec.task_names]
    if method == "safe_cpift":
        return ["safety_core", *probes, *group_stages(ctx, "safe_cpift")]
    if method == "cpift":
        return [*probes, *group_stages(ctx, "cpift")]
    return []


def baseline_budget(ctx: RunContext) -> int:
    """Total training examples of each SFT baseline (see `safe_cpift.pipeline.budget`)."""
    from safe_cpift.pipeline.budget import baseline_examples

    return baseline_examples(ctx.spec)


def run_multitask(ctx: RunContext, tmp: Path, *, safety: bool) -> dict[str, Any]:
    """Body of `multitask_sft` (`safety=False`) or `safety_mix_sft` (`safety=True`)."""
    name = SAFETY_MIX if safety else MULTITASK
    data, counts, seed, total = multitask_data(ctx, safety=safety)
    summary = {"method": name, "budget": total,
               "train": train_and_save(ctx, ctx.spec.aligned_model, data, tmp, seed=seed)}
    summary["train"]["mix"] = counts
    return summary


def multitask_data(ctx: RunContext, *, safety: bool, total: int | None = None,
                   name: str | None = None) -> tuple[Any, dict[str, int], int, int]:
    """`(dataset, counts, seed, budget)` of `multitask_sft` (or `safety_mix_sft`): the rows, in their training
    order, and the seed its trainer uses; `lora_sft` trains on exactly these. `total` (default: the
    baselines' budget) and `name` (the stage whose seed is used) serve other multi-task stages."""
    spec = ctx.spec
    total = baseline_budget(ctx) if total is None else total
    # the same total; with `safety=True` a `safety_mix` share of it are safety examples
    n_safety = int(total * spec.safety_mix + 0.5) if safety else 0
    n_task = max(len(spec.task_names), total - n_safety)
    seed = spec.stage_seed(name or (SAFETY_MIX if safety else MULTITASK))
    data, counts = mix(ctx, split_evenly(n_task, list(spec.task_names)), n_safety, seed)
    return data, counts, seed, total


def run_sequential(ctx: RunContext, tmp: Path, i: int) -> dict[str, Any]:
    """Body of `sequential_sft_<i>_<task>`: task `i` from the previous task's model."""
    spec = ctx.spec
    stages = sequential_stages(ctx)
    task = spec.task_names[i]
    share = split_evenly(baseline_budget(ctx), list(spec.task_names))[task]
    start = spec.aligned_model if i == 0 else ctx.model_dir(stages[i - 1])
    seed = spec.stage_seed(stages[i])
    data, counts = mix(ctx, {task: share}, 0, seed)
    summary = {"method": "sequential_sft", "task": task, "index": i,
               "train": train_and_save(ctx, start, data, tmp, seed=seed)}
    summary["train"]["mix"] = counts
    return summary
