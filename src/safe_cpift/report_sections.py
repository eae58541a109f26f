"""Optional sections of report.md: single-task reference, per-stage scores, early warning, general
capability and the safety sets with per-type rates. Each returns its lines (none when the results
lack what it shows)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safe_cpift.report_tables import _num, _signed, task_names


def single_task_section(results: Mapping[str, Any]) -> list[str]:
    """Lines of the single-task reference: each task trained alone beside every method ([] when absent)."""
    single = results.get("single_task") or {}
    if not single:
        return []
    tasks = [t for t in task_names(results) if t in single]
    methods = [m for m in results["methods"] if m != results.get("reference", "aligned")]
    head = ["task", "trained alone", *[f"`{m}`" for m in methods]]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for t in tasks:
        rows.append(f"| {t} | {_num(single[t])} | "
                    + " | ".join(_num(results["methods"][m].get("task_scores", {}).get(t)) for m in methods) + " |")
    alone = sum(single[t] for t in tasks) / len(tasks)
    budget = results.get("single_task_budget") or {}
    how = ("trained alone at `multitask_sft`'s examples per task" if budget.get("source") == "matched"
           else "trained alone (its CPI-FT probe model)")
    lines = ["## Single-task reference", "",
             f"Each task's score when {how}, beside every method's final model:", "", *rows, ""]
    multi = (results["methods"].get("multitask_sft") or {}).get("task_mean")
    if multi is not None:
        gap = alone - multi
        lines += [f"Trained alone, the tasks average {_num(alone)}; `multitask_sft` reaches {_num(multi)} "
                  f"({_signed(-gap)}): " + seesaw_verdict(gap, budget), ""]
    if budget and not budget.get("matched"):
        lines += [f"Budgets differ: each task alone saw {budget.get('examples_per_task')} examples, while "
                  f"`multitask_sft` gave each task {_num(budget.get('multitask_examples_per_task'), 0)}; "
                  "the comparison is not at equal examples per task.", ""]
    return lines


def stage_scores_section(results: Mapping[str, Any]) -> list[str]:
    """Lines of the per-stage table: every task's score after fusion and each pipelined stage."""
    per_method = results.get("stage_scores") or {}
    if not per_method:
        return []
    tasks = task_names(results)
    lines = ["## Task scores after every stage", "",
             "What CPI-FT's pipeline kept and learned stage by stage (a task falling after its own stage was "
             "forgotten; a task low after its own stage was undertrained). `examples` is what the stage "
             "trained on (the mix per task; `replay` of them from earlier groups' tasks).", ""]
    for method, rows in per_method.items():
        head = ["stage", "group", *tasks, "examples"]
        lines += [f"`{method}`:", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        for r in rows:
            group = ", ".join(r.get("group") or []) or "(fused)"
            mix = r.get("mix") or {}
            examples = ", ".join(f"{k} {v}" for k, v in mix.items()) or "–"
            if r.get("replay"):
                examples += f" (replay {r['replay']})"
            lines.append(f"| {r['stage']} | {group} | "
                         + " | ".join(_num(r["task_scores"].get(t)) for t in tasks) + f" | {examples} |")
        lines.append("")
    return lines


def seesaw_verdict(gap: float, budget: Mapping[str, Any]) -> str:
    """What a gap (tasks alone minus `multitask_sft`, in task mean) says, given the single-task budget."""
    if budget and not budget.get("matched"):
        return ("not a seesaw check: the budgets differ (below); `budget.single_task: matched` trains each task "
                "alone at `multitask_sft`'s examples per task.")
    if gap >= 0.05:
        return "a seesaw: training the tasks together costs them."
    return "no seesaw (gap under 0.05). " + NO_SEESAW_HINT


# CPI-FT isolates task cores against interference; where the tasks do not interfere, the measured comparison
# is the same protections without the pipeline (docs/efficacy.md section 0c)
NO_SEESAW_HINT = ("CPI-FT isolates tasks that interfere; where they do not, compare `protected_sft` (the same "
                  "protections around plain multi-task SFT, opt-in in `baselines`).")


def no_correlation_reason(pairs: int, high: float | None, low: float | None) -> str:
    """Why the early warning's correlation is undefined, from the number of (task, seed) pairs and the
    largest and smallest refusal a probe lost."""
    if pairs < 3:
        return "too few tasks for a correlation"
    if high is not None and high == low:
        return (f"undefined: every probe lost the same refusal ({high:+.3f}), so there is no erosion to predict "
                "at this probe budget (larger `cpift.probe_examples` erode more)")
    return "undefined: the task cores' overlaps with the safety core do not differ"


def early_warning_section(results: Mapping[str, Any]) -> list[str]:
    """Lines of the early-warning section: safety-core overlap of each task core vs the refusal it eroded."""
    ew = results.get("early_warning")
    if not ew:
        return []
    rows = ["| task | overlap with the safety core | refusal lost when trained alone |", "|---|---:|---:|"]
    rows += [f"| {t} | {_num(ew['safety_overlap'][t])} | {_signed(ew['refusal_drop'][t])} |" for t in ew["refusal_drop"]]
    r = ew.get("pearson")
    drops = list(ew["refusal_drop"].values())
    verdict = (no_correlation_reason(len(drops), max(drops, default=None), min(drops, default=None))
               if r is None else
               f"Pearson r = {r:+.2f} over {len(ew['refusal_drop'])} tasks — "
               + ("the overlap ranks the tasks by the safety they erode: a warning before the expensive training "
                  "is possible on this setup" if r >= 0.5 else
                  "the overlap does not predict the erosion here; no early warning is drawn from it"))
    return ["## Early warning: does core overlap predict erosion?", "",
            "Each task's core overlap with the safety core is known after its cheap probe run; the refusal the "
            "probe model (that task alone) lost against the aligned model is what the overlap would have to "
            "predict.", "", *rows, "", verdict + ".", ""]


def general_table(results: Mapping[str, Any]) -> str:
    """Markdown table method × lm-eval task of `general_scores` ("" when no method has any)."""
    methods = {m: r.get("general_scores") for m, r in results["methods"].items() if r.get("general_scores")}
    tasks = sorted({t for scores in methods.values() for t in scores})
    if not tasks:
        return ""
    rows = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for m, scores in methods.items():
        cells = ["—" if scores.get(t) is None else f"{scores[t]:.3f}" for t in tasks]
        rows.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _by_type_table(results: Mapping[str, Any], key: str, sizes: Mapping[str, int]) -> list[str]:
    methods = {m: r[key] for m, r in results["methods"].items() if r.get(key)}
    types = list(dict.fromkeys(t for rates in methods.values() for t in rates))
    if not types:
        return []
    rows = ["| prompt type | n | " + " | ".join(f"`{m}`" for m in methods) + " |",
            "|---|---:|" + "---:|" * len(methods)]
    for t in types:
        rows.append(f"| {t} | {sizes.get(t, '–')} | " + " | ".join(_num(r.get(t)) for r in methods.values()) + " |")
    return rows


def safety_sets_section(results: Mapping[str, Any]) -> list[str]:
    """Lines of the report's "Refusal and over-refusal" section: which harmful/benign sets were used
    (and whether they were defaults), and the over-refusal (and refusal) rate per prompt type."""
    sets = results.get("eval_sets") or {}
    sizes = results.get("eval_sizes") or {}
    over_types = _by_type_table(results, "over_refusal_by_type", sizes.get("benign_by_type") or {})
    if not sets and not over_types:
        return []
    out = ["## Refusal and over-refusal", ""]
    for kind, label in (("harmful", "Harmful prompts (refusal rate)"), ("benign", "Benign prompts (over-refusal rate)")):
        if kind in sets:
            info = sets[kind]
            how = " — the default, as the recipe names no `eval." + kind + "`" if info.get("default") else ""
            desc = f": {info['description']}" if info.get("description") not in (None, info.get("source")) else ""
            out.append(f"- {label}: `{info.get('source')}`{desc}{how}.")
    out.append("")
    if over_types:
        out += ["Over-refusal rate per prompt type (share of benign prompts of that type refused; lower is better):",
                "", *over_types, ""]
    ref_types = _by_type_table(results, "refusal_by_type", sizes.get("harmful_by_type") or {})
    if ref_types:
        out += ["Refusal rate per prompt type (share of harmful prompts of that type refused; higher is safer):",
                "", *ref_types, ""]
    return out
