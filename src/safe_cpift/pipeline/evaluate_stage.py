"""Stages `aligned_eval` and `eval_<method>`: every method's final model through the same suites."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safe_cpift.io import atomic_write_json
from safe_cpift.pipeline.common import RunContext, load_model
from safe_cpift.pipeline.spec import PEER_BASELINES

logger = logging.getLogger(__name__)

ALIGNED_EVAL = "aligned_eval"
RECORDS = "records.json"
METRIC_KEYS = ("task_scores", "task_mean", "refusal_rate", "over_refusal_rate")


def eval_stage(method: str) -> str:
    return ALIGNED_EVAL if method == "aligned" else f"eval_{method}"


def final_model_stage(ctx: RunContext, method: str) -> str:
    """The stage whose model is `method`'s result (`aligned` for θ0 itself)."""
    from safe_cpift.pipeline.baselines import sequential_stages
    from safe_cpift.pipeline.fusion_stage import group_stages

    if method == "aligned":
        return "aligned"
    if method in ("multitask_sft", "safety_mix_sft"):
        return method
    if method == "sequential_sft":
        return sequential_stages(ctx)[-1]
    if method in PEER_BASELINES:  # one stage each, named after the method
        return method
    if method == "safe_cpift" and "repair" in ctx.spec.protections:
        return "repair"
    if method in ("cpift", "safe_cpift"):
        return group_stages(ctx, method)[-1]
    raise ValueError(f"unknown method `{method}`")


def run_eval(ctx: RunContext, tmp: Path, method: str) -> dict[str, Any]:
    """Body of an eval stage: score `method`'s final model; per-example records go to `records.json`."""
    source = final_model_stage(ctx, method)
    model = load_model(ctx.model_dir(source), ctx.spec)
    result = dict(ctx.spec.evaluate(model, ctx.tokenizer()))
    missing = [k for k in METRIC_KEYS if k not in result]
    if missing:
        raise ValueError(f"the evaluator returned no {missing} for `{method}`; it must return {', '.join(METRIC_KEYS)}")
    records = result.pop("records", None)
    if records is not None:
        atomic_write_json(Path(tmp) / RECORDS, records)
    metrics = {k: result[k] for k in METRIC_KEYS}
    extra = {k: v for k, v in result.items() if k not in METRIC_KEYS}
    logger.info("%s: task_mean=%.3f refusal=%.3f over_refusal=%.3f", method, metrics["task_mean"],
                metrics["refusal_rate"], metrics["over_refusal_rate"])
    return {"method": method, "model_stage": source, "metrics": metrics, "extra": extra,
            "records": RECORDS if records is not None else None}
