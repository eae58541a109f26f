"""CPI-FT steps 1–2: per-task probe SFT, task cores, and clusters with a stage order.

* `probe_<task>`: SFT on the task alone from θ0 (`probe_examples` rows, one epoch). With
  `probe_lora` the probe trains a LoRA adapter instead (rank `rank`, `alpha`, on `target_modules`, at
  `learning_rate`, default 10 × the run's), merged into θ0: its core is the top-`top_p` of the merged
  LoRA delta, and the merged model is the task model that fusion SLERPs (SLERP needs whole models).
* `task_cores`: each task's core = top-`top_p` of |θ_probe − θ0| (scope from the spec).
* `single_task`: the single-task reference of the report (each task trained alone, on its own task):
  the probe models at `probe_examples` per task, or, with `single_task: matched`, each task trained
  alone at `multitask_sft`'s examples per task; the budget's `matched` says whether the two are equal.
  Also each model's refusal rate: how much training on that task alone eroded refusal (compared with
  the task core's overlap with the safety core in the report).
* `clusters`: Jaccard matrix of the task cores and the safety core, groups = connected components of
  Jaccard ≥ `tau` (`safe_cpift.cluster.cluster_tasks`, which also fixes the stage order), `overlap.png`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safe_cpift.io import atomic_write_json
from safe_cpift.pipeline.common import REGION_DIR, RunContext, mix, train_and_save

logger = logging.getLogger(__name__)

TASK_CORES = "task_cores"
SINGLE_TASK = "single_task"
CLUSTERS = "clusters"
SAFETY_NAME = "safety"


def probe_stage(task: str) -> str:
    return f"probe_{task}"


def probe_lora_settings(ctx: RunContext) -> dict[str, Any] | None:
    """The run's LoRA probe settings with defaults filled in (`learning_rate` resolved), or `None`.

    The defaults are `lora_sft`'s (`safe_cpift.pipeline.lora`): rank 8, α 32 on every linear layer, at
    10 × the run's learning rate.
    """
    from safe_cpift.pipeline import lora as lora_defaults

    given = ctx.spec.probe_lora
    if given is None:
        return None
    out = {"rank": lora_defaults.RANK, "alpha": lora_defaults.ALPHA, "target_modules": lora_defaults.TARGET_MODULES,
           "learning_rate": None, **{k: v for k, v in given.items() if v is not None}}
    if out["learning_rate"] is None:
        out["learning_rate"] = lora_defaults.LR_FACTOR * ctx.spec.train.learning_rate
    return out


def run_probe(ctx: RunContext, tmp: Path, task: str) -> dict[str, Any]:
    """Body of stage `probe_<task>`: SFT on `task` alone from θ0 (a merged LoRA adapter with `probe_lora`)."""
    spec = ctx.spec
    seed = spec.stage_seed(probe_stage(task))
    data, counts = mix(ctx, {task: spec.probe_examples}, 0, seed)
    lora = probe_lora_settings(ctx)
    if lora is None:
        summary = {"task": task, "train": train_and_save(ctx, spec.aligned_model, data, tmp, seed=seed)}
    else:
        from safe_cpift.pipeline.lora import lora_config

        config = lora_config(lora["rank"], lora["alpha"], lora["target_modules"])
        summary = {"task": task, "lora": lora,
                   "train": train_and_save(ctx, spec.aligned_model, data, tmp, seed=seed,
                                           learning_rate=float(lora["learning_rate"]), lora=config)}
    summary["train"]["mix"] = counts
    return summary


def task_scores(ctx: RunContext, model: Any, names: list[str]) -> dict[str, float]:
    """`model`'s scores on the tasks `names` alone (the evaluator's `score_tasks` when it has one)."""
    score_tasks = getattr(ctx.spec.evaluate, "score_tasks", None)
    if score_tasks is not None:
        return dict(score_tasks(model, ctx.tokenizer(), names))
    scores = ctx.spec.evaluate(model, ctx.tokenizer())["task_scores"]
    return {n: float(scores[n]) for n in names}


def run_single_task(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `single_task`: each task trained alone, scored on its own test set.

    With `single_task: probe` the models are the task probes (`probe_examples` per task); with `matched`
    each task is trained alone here from θ0 at `multitask_sft`'s examples per task (the models are
    scored, then deleted), so the report's seesaw check compares at equal examples per task.
    """
    import shutil

    from safe_cpift.pipeline.baselines import baseline_budget
    from safe_cpift.pipeline.common import load_model, split_evenly

    spec = ctx.spec
    total = baseline_budget(ctx)
    shares = split_evenly(total, list(spec.task_names))  # what multitask_sft gives each task
    matched_run = spec.single_task == "matched"
    scores, refusal, trained = {}, {}, {}
    refusal_of = getattr(spec.evaluate, "refusal_rate", None)
    for task in spec.task_names:
        if matched_run:
            seed = spec.stage_seed(f"{SINGLE_TASK}_{task}")
            data, _ = mix(ctx, {task: shares[task]}, 0, seed)
            trained[task] = train_and_save(ctx, spec.aligned_model, data, tmp, seed=seed, out_name=f"alone_{task}")
            source = Path(tmp) / f"alone_{task}"
        else:
            source = ctx.model_dir(probe_stage(task))
        model = load_model(source, spec)
        scores[task] = float(task_scores(ctx, model, [task])[task])
        if refusal_of is not None:  # how much training on this task alone eroded refusal (early warning)
            refusal[task] = refusal_of(model, ctx.tokenizer())
        del model
        if matched_run:
            shutil.rmtree(source, ignore_errors=True)
    multitask_per_task = total / len(spec.task_names)
    per_task = round(multitask_per_task) if matched_run else spec.probe_examples
    budget = {"examples_per_task": per_task, "multitask_examples_per_task": multitask_per_task,
              "matched": abs(multitask_per_task - per_task) < 1, "source": spec.single_task}
    logger.info("single-task scores: %s", ", ".join(f"{t} {v:.3f}" for t, v in scores.items()))
    out = {"scores": scores, "budget": budget, "refusal_after_probe": refusal or None}
    if trained:
        out["trained_alone"] = trained  # not `train`: the stage line shows the scores
    atomic_write_json(Path(tmp) / "single_task.json", out)
    return out


def run_task_cores(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `task_cores`: one region per task under `tmp/<task>/region`."""
    from safe_cpift.regions import CoreRegion

    spec = ctx.spec
    out: dict[str, Any] = {"top_p": spec.top_p, "scope": spec.scope, "scorer": spec.task_scorer, "tasks": {}}
    theta0 = ctx.theta0()
    for task in spec.task_names:
        if spec.task_scorer == "importance":
            from safe_cpift.pipeline.common import load_model

            model = load_model(spec.aligned_model, spec, train=True)
            data, _ = mix(ctx, {task: spec.probe_examples}, 0, spec.stage_seed(probe_stage(task)))
            region = CoreRegion.from_importance(model, data, top_p=spec.top_p, scope=spec.scope,
                                                tokenizer=ctx.tokenizer(), progress=False)
            del model  # freed before the next task's copy loads
        else:
            region = CoreRegion.from_update(theta0, ctx.model_dir(probe_stage(task)), top_p=spec.top_p,
                                            scope=spec.scope, scorer="update", progress=False)
        region.save(Path(tmp) / task / REGION_DIR)
        out["tasks"][task] = {"entries": int(region.num_selected), "fraction": float(region.fraction)}
    return out


def task_regions(ctx: RunContext) -> dict[str, Any]:
    """The task cores of a completed `task_cores` stage, in task order."""
    from safe_cpift.regions import CoreRegion

    root = ctx.stage_dir(TASK_CORES)
    return {t: CoreRegion.load(root / t / REGION_DIR) for t in ctx.spec.task_names}


def run_clusters(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `clusters`: overlap matrices, groups in stage order, and `overlap.png`."""
    from safe_cpift.cluster import cluster_tasks, overlap_matrix, plot_overlap

    spec = ctx.spec
    regions = task_regions(ctx)
    safety = ctx.region("safety_core")
    groups = [list(g) for g in cluster_tasks(regions, tau=spec.tau)]
    summary: dict[str, Any] = {"tau": spec.tau, "groups": groups, "order": [t for g in groups for t in g]}
    for metric in ("jaccard", "overlap"):
        names, matrix = overlap_matrix(regions, metric=metric, protect=safety, protect_name=SAFETY_NAME)
        summary[metric] = {"names": list(names), "matrix": [[round(float(v), 6) for v in row] for row in matrix]}
    summary["safety_overlap"] = {t: float(regions[t].overlap(safety)) for t in spec.task_names}
    try:
        plot_overlap(regions, Path(tmp) / "overlap.png", protect=safety, protect_name=SAFETY_NAME)
        summary["plot"] = "overlap.png"
    except ImportError as err:  # matplotlib is an extra
        logger.warning("overlap.png not drawn: %s", err)
        summary["plot"] = None
    logger.info("clusters (tau=%.3g): %s", spec.tau, groups)
    return summary
