"""Bounded disk: delete a stage's model once every stage that reads it is done (`PipelineSpec.prune_models`).

Full fine-tunes move every entry, so fusion needs the probe models whole (`benchmarks/slerp_sparse.py`);
but after fusion, and along each chain of training stages, most checkpoints are read once. These are
the only readers of a stage's `model/` directory (results and reports read `stage.json` alone):

- `probe_<task>`: `single_task`, `task_cores` and the fusion stage of each fusion method;
- `fusion` / `cpift_fusion`: the method's first group stage; group `i`: group `i + 1`;
- `sequential_sft_<i>`: `sequential_sft_<i+1>`.

The last stage of each chain (a method's final model) is never deleted. A pruned stage stays done
(its `stage.json` and regions are kept), so `resume` works as before; the manifest records the bytes
freed under the stage's entry (`pruned_model_bytes`). Whether or not models are pruned, every stage's
entry also records the run's disk right after it, before any pruning (`disk_after_stage`: the stage
model directories then on disk and the run directory's bytes); the largest of these is the run's peak.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from safe_cpift.footprint import dir_bytes
from safe_cpift.pipeline.common import MODEL_DIR, RunContext

logger = logging.getLogger(__name__)

FUSION_METHODS = ("safe_cpift", "cpift")


def stage_models(root: Path) -> list[Path]:
    """The model directories of a run's stages (`<stage>/model`, and the safety probe's `probe_model`)."""
    from safe_cpift.pipeline.safety_core import PROBE_DIR

    return sorted(p for pattern in (f"*/{MODEL_DIR}", f"*/{PROBE_DIR}") for p in Path(root).glob(pattern) if p.is_dir())


def disk_after_stage(root: Path) -> dict[str, Any]:
    """What the run directory holds now: `{"models": stage model directories, "bytes": all files}`."""
    return {"models": len(stage_models(root)), "bytes": dir_bytes(root)}


def readers(ctx: RunContext, done: Any) -> dict[str, list[str]]:
    """Stage -> the stages that read its model, for every stage whose readers are known so far."""
    from safe_cpift.pipeline.baselines import sequential_stages
    from safe_cpift.pipeline.fusion_stage import fusion_stage, group_stages
    from safe_cpift.pipeline.probes import CLUSTERS, SINGLE_TASK, TASK_CORES, probe_stage

    spec = ctx.spec
    methods = [m for m in FUSION_METHODS if m in spec.methods]
    out = {probe_stage(t): [SINGLE_TASK, TASK_CORES, *(fusion_stage(m) for m in methods)] for t in spec.task_names}
    chains = []
    if "sequential_sft" in spec.methods:
        chains.append(sequential_stages(ctx))
    if done(CLUSTERS):  # the groups are known once the clusters are
        chains += [[fusion_stage(m), *group_stages(ctx, m)] for m in methods]
    for chain in chains:
        out.update({a: [b] for a, b in zip(chain[:-1], chain[1:], strict=True)})
    return out


def prune_models(ctx: RunContext, run: Any) -> int:
    """Delete the models no unfinished stage will read; returns the bytes freed."""
    freed = 0
    for stage, reading in readers(ctx, run.is_done).items():
        model = ctx.root / stage / MODEL_DIR
        if run.is_done(stage) and model.is_dir() and all(run.is_done(r) for r in reading):
            size = dir_bytes(model)
            shutil.rmtree(model)
            run.annotate(stage, pruned_model_bytes=size)
            freed += size
            logger.info("pruned the model of %s (%.1f MB): read by %s, all done", stage, size / 1e6, ", ".join(reading))
    return freed
