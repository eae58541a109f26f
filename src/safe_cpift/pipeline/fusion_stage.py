"""CPI-FT steps 3–5: fusion and pipelined SFT, for `safe_cpift` (safety protected) and `cpift`.

* fusion (`fusion` / `cpift_fusion`): each task's core transplanted from its own probe model, the
  rest SLERPed (`safe_cpift.merge.fuse`); `safe_cpift` passes the safety core as `protect`, so its
  entries keep their protected values exactly; `cpift` (the paper) has no protected region.
* pipelined SFT (`sft_group_<i>` / `cpift_sft_group_<i>`), one stage per group in stage order,
  starting from the fused model: a balanced mix of the group's tasks (sizes from
  `safe_cpift.pipeline.budget.group_plan`). For `safe_cpift` a `safety_mix` share of the mix are
  safety examples; from the second stage on a `replay_fraction` share of the task examples (with
  `balanced`: an equal share per task seen so far) come from earlier groups' tasks (mixed-task stages). The safety core plus the cores of earlier groups
  are frozen with `CoreFreezeCallback` (restored after every optimiser step, which is
  exact under AdamW weight decay). `cpift` freezes only the earlier groups' cores and adds no safety.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safe_cpift.pipeline.budget import group_plan
from safe_cpift.pipeline.common import MODEL_DIR, RunContext, mix, train_and_save
from safe_cpift.pipeline.probes import CLUSTERS, probe_stage, task_regions
from safe_cpift.pipeline.protections import stage_callbacks
from safe_cpift.pipeline.safety_core import STAGE as SAFETY_CORE
from safe_cpift.pipeline.safety_core import protect_source_dir

logger = logging.getLogger(__name__)

PREFIX = {"safe_cpift": "", "cpift": "cpift_"}


def fusion_stage(method: str) -> str:
    return f"{PREFIX[method]}fusion"


def group_stage(method: str, i: int) -> str:
    return f"{PREFIX[method]}sft_group_{i}"


def groups(ctx: RunContext) -> list[list[str]]:
    return [list(g) for g in ctx.summary(CLUSTERS)["groups"]]


def group_stages(ctx: RunContext, method: str) -> list[str]:
    return [group_stage(method, i) for i in range(len(groups(ctx)))]


def final_model_stage(ctx: RunContext, method: str) -> str:
    return group_stages(ctx, method)[-1]


def run_fusion(ctx: RunContext, tmp: Path, method: str) -> dict[str, Any]:
    """Body of `fusion` / `cpift_fusion`: write the fused model to `tmp/model`."""
    import time

    from safe_cpift.merge import fuse_with_manifest

    spec = ctx.spec
    names = list(spec.task_names)
    weights = spec.slerp_weights
    t = spec.slerp_t if len(names) == 2 and weights is None else 0.5
    protect = ctx.region(SAFETY_CORE) if method == "safe_cpift" and spec.freeze_safety_core else None
    source = protect_source_dir(ctx) if protect is not None else None
    start = time.perf_counter()
    _, manifest = fuse_with_manifest(
        ctx.theta0(), {n: ctx.model_dir(probe_stage(n)) for n in names}, task_regions(ctx),
        protect=protect, protect_source=source, t=t, weights=weights, out_dir=Path(tmp) / MODEL_DIR)
    seconds = time.perf_counter() - start
    summary = {"method": method, "t": t, "weights": manifest.get("weights"), "protected": protect is not None,
               "counts": manifest.get("counts"), "fusion_seconds": seconds}
    if len(names) > 2 and spec.slerp_t != 0.5 and weights is None:
        summary["note"] = (f"slerp_t={spec.slerp_t} ignored: with {len(names)} tasks the fusion weighs models "
                           "equally (use slerp_weights)")
    # the fused directory gets the tokenizer from θ0's side files; make sure it is there
    if not (Path(tmp) / MODEL_DIR / "tokenizer_config.json").exists():
        ctx.tokenizer().save_pretrained(Path(tmp) / MODEL_DIR)
    track_tasks(ctx, Path(tmp) / MODEL_DIR, summary)
    return summary


def track_tasks(ctx: RunContext, model_dir: Path, summary: dict[str, Any]) -> None:
    """Add every task's score of the model in `model_dir` to `summary` (when `track_stages` is on)."""
    if not ctx.spec.track_stages:
        return
    from safe_cpift.pipeline.common import load_model
    from safe_cpift.pipeline.probes import task_scores

    summary["task_scores"] = task_scores(ctx, load_model(model_dir, ctx.spec), list(ctx.spec.task_names))


def freeze_region(ctx: RunContext, method: str, i: int) -> Any | None:
    """The entries frozen in group stage `i`: earlier groups' cores (+ the safety core for safe_cpift)."""
    spec = ctx.spec
    cores = task_regions(ctx)
    region = ctx.region(SAFETY_CORE) if method == "safe_cpift" and spec.freeze_safety_core else None
    if not spec.freeze_earlier_groups:
        return region
    for g in groups(ctx)[:i]:
        for task in g:
            region = cores[task] if region is None else region.union(cores[task])
    return region


def run_group(ctx: RunContext, tmp: Path, method: str, i: int) -> dict[str, Any]:
    """Body of `sft_group_<i>` / `cpift_sft_group_<i>`."""
    spec = ctx.spec
    name = group_stage(method, i)
    group = groups(ctx)[i]
    start = ctx.model_dir(fusion_stage(method) if i == 0 else group_stage(method, i - 1))
    plan = group_plan(spec, groups(ctx), method)[i]
    seed = spec.stage_seed(name)
    data, counts = mix(ctx, plan["tasks"], plan["safety"], seed)
    region = freeze_region(ctx, method, i)
    summary = {"method": method, "group": group, "index": i,
               "train": train_and_save(ctx, start, data, tmp, seed=seed, freeze=region,
                                       callbacks=stage_callbacks(ctx, method))}
    summary["train"]["mix"] = counts
    summary["replay"] = plan["replay"]
    track_tasks(ctx, Path(tmp) / MODEL_DIR, summary)
    return summary
