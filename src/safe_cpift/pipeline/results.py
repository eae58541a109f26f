"""Stage `report`: assemble results.json from the completed stages and check the safety core.

Everything here is read back from disk (stage summaries, regions, the final model), so the results of
a resumed run equal those of an uninterrupted one except the measured `*_seconds` fields.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safe_cpift.pipeline.baselines import cost_stages
from safe_cpift.pipeline.budget import baseline_examples, probe_examples, stage_cost
from safe_cpift.pipeline.common import RunContext
from safe_cpift.pipeline.evaluate_stage import eval_stage, final_model_stage
from safe_cpift.pipeline.probes import CLUSTERS, SINGLE_TASK
from safe_cpift.pipeline.safety_core import PROTECTED_FILE, verify_safety_core
from safe_cpift.pipeline.safety_core import STAGE as SAFETY_CORE

logger = logging.getLogger(__name__)

REPORT = "report"
FORMAT = "safe-cpift-results/1"


def method_result(ctx: RunContext, method: str) -> dict[str, Any]:
    """Scores of `method` plus what it cost (`train_seconds`, `examples_seen`, per-stage breakdown)."""
    summary = ctx.summary(eval_stage(method))
    metrics = dict(summary["metrics"])
    extra = summary.get("extra") or {}
    # general_scores: lm-eval suites of the recipe; *_by_type: rates per prompt type (XSTest's types)
    for key in ("general_scores", "refusal_by_type", "over_refusal_by_type"):
        if extra.get(key) is not None:
            metrics[key] = extra[key]
    cost = stage_cost(ctx, cost_stages(ctx, method))
    out = {**metrics, "train_seconds": cost["train_seconds"], "examples_seen": cost["examples_seen"],
           "cost": cost["stages"], "model": final_model_stage(ctx, method)}
    return out


def check_safety_core(ctx: RunContext) -> dict[str, Any]:
    """The safety core's summary with `intact` measured on the final safe_cpift model."""
    spec = ctx.spec
    summary = ctx.summary(SAFETY_CORE)
    region = ctx.region(SAFETY_CORE)
    final = ctx.model_dir(final_model_stage(ctx, "safe_cpift"))
    check = verify_safety_core(final, region, ctx.stage_dir(SAFETY_CORE) / PROTECTED_FILE)
    if not check["intact"]:
        logger.warning("safety core NOT intact: %d of %d entries changed (first: %s)", check["mismatched"],
                       check["entries"], check["first_mismatch"])
    return {"top_p": spec.safety_top_p, "scope": spec.safety_scope, "scorer": spec.safety_scorer,
            "entries": int(summary["entries"]), "fraction": summary["fraction"], "intact": bool(check["intact"]),
            "checked_entries": check["entries"], "mismatched": check["mismatched"],
            "compared_dtypes": check["compared_dtypes"],
            "first_mismatch": check["first_mismatch"], "protect_source": spec.protect_source,
            "frozen_during_sft": spec.freeze_safety_core}


def stage_scores(ctx: RunContext) -> dict[str, list[dict[str, Any]]]:
    """Every task's score after fusion and after each pipelined stage of `cpift` / `safe_cpift`, with the
    examples each stage trained on (empty when `track_stages` is off)."""
    from safe_cpift.pipeline.fusion_stage import fusion_stage, group_stages

    out: dict[str, list[dict[str, Any]]] = {}
    for method in ("safe_cpift", "cpift"):
        if method not in ctx.spec.methods:
            continue
        rows = []
        for stage in [fusion_stage(method), *group_stages(ctx, method)]:
            summary = ctx.summary(stage)
            if "task_scores" not in summary:
                continue
            train = summary.get("train") or {}
            rows.append({"stage": stage, "group": summary.get("group"), "task_scores": summary["task_scores"],
                         "mix": train.get("mix"), "replay": summary.get("replay", 0),
                         "examples": train.get("examples_seen", 0)})
        if rows:
            out[method] = rows
    return out


def early_warning(refusal_after: dict[str, float] | None, overlap: dict[str, float] | None,
                  aligned_refusal: float | None) -> dict[str, Any] | None:
    """Per task: its core's overlap with the safety core (known after the cheap probe) beside the refusal
    it lost when trained alone, and their correlation over tasks (`None` without refusal numbers)."""
    if not refusal_after or not overlap or aligned_refusal is None:
        return None
    tasks = [t for t in refusal_after if t in overlap and refusal_after[t] is not None]
    drop = {t: aligned_refusal - refusal_after[t] for t in tasks}
    return {"safety_overlap": {t: overlap[t] for t in tasks}, "refusal_drop": drop,
            "pearson": pearson([overlap[t] for t in tasks], [drop[t] for t in tasks])}


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation (`None` with fewer than three points or no spread)."""
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _comparison_notes(methods: dict[str, dict[str, Any]]) -> list[str]:
    """Plain statements of where safe_cpift lost (or won) against the other methods."""
    notes = []
    mine = methods.get("safe_cpift")
    if not mine:
        return notes
    for name, other in methods.items():
        if name == "safe_cpift" or name == "aligned":
            continue
        task = _sub(mine["task_mean"], other["task_mean"])
        ref = _sub(mine["refusal_rate"], other["refusal_rate"])
        over = _sub(mine["over_refusal_rate"], other["over_refusal_rate"])
        if task is None or ref is None:
            continue
        verdict = ("safe_cpift is better on tasks and safety" if task > 0 and ref > 0 else
                   "safe_cpift loses on both tasks and safety" if task < 0 and ref < 0 else
                   "a trade-off" if task * ref < 0 else "no difference on at least one axis")
        over_text = "n/a" if over is None else f"{over:+.3f}"
        notes.append(f"safe_cpift vs {name}: task mean {task:+.3f}, refusal {ref:+.3f}, over-refusal {over_text} "
                     f"({verdict}; one seed — see benchmarks/methods_over_seeds.py for the spread)")
    return notes


def build_results(ctx: RunContext) -> dict[str, Any]:
    """The results.json dict (schema in DESIGN.md, plus clusters, budget and notes)."""
    spec = ctx.spec
    methods = {m: method_result(ctx, m) for m in spec.methods}
    aligned = methods["aligned"]
    for r in methods.values():
        r["delta_vs_aligned"] = {k: _sub(r[k], aligned[k]) for k in ("task_mean", "refusal_rate", "over_refusal_rate")}
    clusters = ctx.summary(CLUSTERS)
    single = ctx.summary(SINGLE_TASK)
    fusion_seconds = {m: ctx.summary(s)["fusion_seconds"] for m, s in (("safe_cpift", "fusion"), ("cpift", "cpift_fusion"))
                      if m in spec.methods}
    budget = {
        "examples_per_method": spec.examples_per_method,
        "include_probes": spec.include_probes,
        "baseline_examples": baseline_examples(spec),
        "probe_examples": {m: probe_examples(spec, m) for m in ("cpift", "safe_cpift") if m in spec.methods},
        "examples_seen": {m: r["examples_seen"] for m, r in methods.items()},
        "train_seconds": {m: r["train_seconds"] for m, r in methods.items()},
        "fusion_seconds": fusion_seconds,
        "rule": ("each SFT baseline trains on examples_per_method examples"
                 + (" plus safe_cpift's probe examples, i.e. as many as safe_cpift in total" if spec.include_probes
                    else "; cpift/safe_cpift also pay for their probes (not matched)")),
    }
    notes = list(spec.notes)
    if not spec.include_probes:
        notes.append("budget not matched: the baselines trained on fewer examples than safe_cpift "
                     "(its probes came on top); see `budget`")
    if spec.probe_lora is not None:
        notes.append("the task probes trained LoRA adapters (`probe_lora`), merged into their probe models: the task "
                     "cores are the top of the merged LoRA deltas, not of full fine-tunes (docs/scaling.md)")
    if not spec.freeze_safety_core:
        notes.append("freeze_safety_core is off: the safety core was neither protected in fusion nor frozen")
    notes += _comparison_notes(methods)
    results = {
        "format": FORMAT,
        "run": spec.name,
        "seed": spec.seed,
        "reference": "aligned",
        "tasks": list(spec.task_names),
        "methods": methods,
        "safety_core": check_safety_core(ctx),
        "clusters": {"tau": clusters["tau"], "groups": clusters["groups"], "order": clusters["order"],
                     "jaccard": clusters["jaccard"], "safety_overlap": clusters["safety_overlap"]},
        "stage_scores": stage_scores(ctx),
        "single_task": single["scores"],
        "single_task_budget": single["budget"],
        "early_warning": early_warning(single.get("refusal_after_probe"), clusters.get("safety_overlap"),
                                      methods["aligned"]["refusal_rate"]),
        "task_cores": {"top_p": spec.top_p, "scope": spec.scope, "scorer": spec.task_scorer},
        "settings": {"tau": spec.tau, "slerp_t": spec.slerp_t, "safety_mix": spec.safety_mix,
                     "replay_fraction": spec.replay_fraction, "protections": list(spec.protections),
                     "freeze_safety_core": spec.freeze_safety_core, "freeze_earlier_groups": spec.freeze_earlier_groups,
                     "mix_safety": spec.mix_safety},
        "budget": budget,
        "notes": notes,
    }
    if spec.slerp_weights is not None:
        results["settings"]["slerp_weights"] = dict(spec.slerp_weights)
    sizes = getattr(spec.evaluate, "sizes", None)
    if callable(sizes):
        results["eval_sizes"] = sizes()
    sets = getattr(spec.evaluate, "sets", None)
    if sets:  # which harmful/benign prompt sets the rates come from, and whether they were defaults
        results["eval_sets"] = sets
    return results


def strip_timing(obj: Any) -> Any:
    """`obj` without any `*_seconds` keys (what must match between a resumed and a fresh run)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if not str(k).endswith("_seconds")}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def run_report(ctx: RunContext, tmp: Path, command: str | None = None) -> dict[str, Any]:
    """Body of stage `report`: results.json, report.md, plots and MODEL_CARD.md under `tmp`."""
    from safe_cpift.report import write_report

    results = build_results(ctx)
    files = write_report(results, Path(tmp), overlap_png=ctx.stage_dir(CLUSTERS) / "overlap.png", command=command)
    return {"files": list(files), "intact": results["safety_core"]["intact"]}
