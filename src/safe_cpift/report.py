"""The human-facing output of a run: results.json, report.md, plots and the model card.

Every sentence that compares methods is generated from the numbers in `results`; nothing is
hard-coded. If `safe_cpift` loses to another method on the tasks or on safety, the report says so.

`results` follows ../shared/DESIGN.md ("Run directory and results"): ``methods`` (each with
``task_scores``, ``task_mean``, ``refusal_rate``, ``over_refusal_rate``, ``train_seconds`` and
optionally ``examples_seen``), ``reference``, ``safety_core`` (``top_p``, ``scope``, ``entries``,
``intact``), and optionally ``tasks``, ``clusters``, ``budget``, ``notes``, ``limitations``, ``run``,
``seed``, ``eval_sets`` (which harmful/benign prompt sets were used), ``eval_sizes`` and, per method,
``over_refusal_by_type`` / ``refusal_by_type`` (rates per prompt type, e.g. XSTest's types).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_cpift.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "METHOD",
    "task_names",
    "methods_table",
    "delta_table",
    "integrity_line",
    "comparison_sentences",
    "limitations",
    "render_report",
    "write_report",
    "safety_sets_section",
]

METHOD = "safe_cpift"
# differences smaller than this are reported as ties (results are shown with three decimals)
TIE = 5e-4
DESCRIPTIONS = {
    "aligned": "the aligned model every method starts from (no fine-tuning)",
    "multitask_sft": "plain SFT on all tasks mixed",
    "sequential_sft": "SFT on one task after another",
    "safety_mix_sft": "multi-task SFT with a few % safety examples mixed in",
    "cpift": "CPI-FT as in the paper, safety not treated specially",
    "safe_cpift": "CPI-FT with safety as the protected task (its composition of protections is under Settings)",
    "sppft": "peer baseline SPPFT (Li et al. 2024): multi-task SFT with whole safety layers frozen",
    "resta": "peer baseline RESTA (Bhardwaj et al. 2024): multitask_sft plus the re-added safety vector",
}
METRICS = (  # key, label, higher is better
    ("task_mean", "task mean", True),
    ("refusal_rate", "refusal of harmful prompts", True),
    ("over_refusal_rate", "over-refusal of benign prompts", False),
)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _signed(x: Any) -> str:
    return "–" if x is None else f"{x:+.3f}"


def task_names(results: Mapping[str, Any]) -> list[str]:
    """The tasks in report order: `results["tasks"]`, else the union of the methods' task_scores."""
    if results.get("tasks"):
        return list(results["tasks"])
    names: list[str] = []
    for r in results["methods"].values():
        names += [t for t in r.get("task_scores", {}) if t not in names]
    return names


def methods_table(results: Mapping[str, Any]) -> str:
    """Markdown table: methods × (each task, task mean, refusal, over-refusal, train seconds, examples seen)."""
    tasks = task_names(results)
    head = ["method", *tasks, "task mean", "refusal ↑", "over-refusal ↓", "train s", "examples seen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in results["methods"].items():
        seen = r.get("examples_seen")
        cells = [f"`{name}`", *[_num(r.get("task_scores", {}).get(t)) for t in tasks], _num(r.get("task_mean")),
                 _num(r.get("refusal_rate")), _num(r.get("over_refusal_rate")), _num(r.get("train_seconds"), 1),
                 "–" if seen is None else str(int(seen))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def delta_table(results: Mapping[str, Any]) -> str:
    """Markdown table of each method's change against the reference (the aligned model)."""
    ref_name = results.get("reference", "aligned")
    ref = results["methods"].get(ref_name)
    if ref is None:
        return f"(no reference method `{ref_name}` in the results)"
    lines = ["| method | Δ task mean | Δ refusal | Δ over-refusal |", "|---|---:|---:|---:|"]
    for name, r in results["methods"].items():
        if name == ref_name:
            continue
        cells = [_signed(r.get(k) - ref[k] if r.get(k) is not None and ref.get(k) is not None else None)
                 for k, _, _ in METRICS]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def integrity_line(results: Mapping[str, Any]) -> str:
    """``safety core: N entries, intact`` — or a loud NOT intact line."""
    core = results.get("safety_core") or {}
    entries = core.get("entries", "?")
    if core.get("intact") is True:
        return f"safety core: {entries} entries, intact"
    changed = core.get("mismatched")
    detail = f" ({changed} entries changed)" if changed is not None else ""
    return f"safety core: {entries} entries, NOT intact{detail}"


def comparison_sentences(results: Mapping[str, Any], method: str = METHOD) -> list[str]:
    """Plain sentences comparing `method` with every other method, derived from the numbers.

    A loss is any metric where `method` is worse than another fine-tuning method by more than a
    rounding tie: lower task mean, lower refusal rate, or higher over-refusal rate. Losses come first
    and use the words "loses to". The reference (the aligned model, which was not fine-tuned) is
    compared separately: how much refusal and task score moved from it.
    """
    methods = results["methods"]
    mine = methods.get(method)
    if mine is None:
        return [f"`{method}` is not in these results, so nothing is compared."]
    ref_name = results.get("reference", "aligned")
    losses, wins, ties = [], [], []
    for other_name, other in methods.items():
        if other_name in (method, ref_name):
            continue
        for key, label, higher_better in METRICS:
            a, b = mine.get(key), other.get(key)
            if a is None or b is None:
                continue
            diff = (a - b) if higher_better else (b - a)
            pair = f"{_num(a)} vs {_num(b)}"
            if diff < -TIE:
                losses.append(f"`{method}` loses to `{other_name}` on {label} ({pair}).")
            elif diff > TIE:
                wins.append((other_name, label))
            else:
                ties.append((other_name, label))
    out = list(losses)
    beaten = {}
    for other_name, label in wins:
        beaten.setdefault(label, []).append(f"`{other_name}`")
    for _, label, _ in METRICS:
        if beaten.get(label):
            out.append(f"`{method}` is better than {', '.join(beaten[label])} on {label}.")
    tied = {}
    for other_name, label in ties:
        tied.setdefault(label, []).append(f"`{other_name}`")
    for _, label, _ in METRICS:
        if tied.get(label):
            out.append(f"`{method}` ties with {', '.join(tied[label])} on {label} (difference below {TIE}).")
    trivial = [f"`{n}`" for n, r in methods.items() if n not in (method, ref_name)
               and r.get("refusal_rate") is not None and r["refusal_rate"] <= 0.05
               and r.get("over_refusal_rate") is not None and r["over_refusal_rate"] < mine.get("over_refusal_rate", 0)]
    if trivial:
        out.append(f"{', '.join(trivial)} refuse{'s' if len(trivial) == 1 else ''} almost nothing (refusal ≤ 0.05), "
                   f"so {'its' if len(trivial) == 1 else 'their'} lower over-refusal comes from not refusing at all, "
                   "not from better calibration.")
    ref = methods.get(ref_name)
    if ref is not None and ref_name != method:
        kept = mine.get("refusal_rate") is not None and ref.get("refusal_rate") is not None
        if kept:
            verb = "kept" if mine["refusal_rate"] >= ref["refusal_rate"] - TIE else "lowered"
            out.append(f"Against the reference `{ref_name}`, `{method}` {verb} the refusal rate "
                       f"({_num(ref['refusal_rate'])} → {_num(mine['refusal_rate'])}) and changed the task mean by "
                       f"{_signed(mine['task_mean'] - ref['task_mean'])}.")
    if not losses:
        out.insert(0, f"`{method}` loses to no other fine-tuning method on task mean, refusal or over-refusal "
                      "in this run.")
    return out


def limitations(results: Mapping[str, Any]) -> list[str]:
    """What this run could not do: the run's own notes and limitations plus checks on the results."""
    out = [str(x) for x in results.get("limitations", [])]
    # comparisons are generated here from the numbers; pipeline notes that restate them are skipped
    out += [str(n) for n in results.get("notes", []) if not str(n).startswith(f"{METHOD} vs ")]
    core = results.get("safety_core") or {}
    if core.get("intact") is not True:
        out.insert(0, "The safety core was NOT intact in the final model: the protection failed; do not "
                      "rely on this model's safety numbers being due to the frozen core.")
    ref = results["methods"].get(results.get("reference", "aligned"))
    tuned = [r for m, r in results["methods"].items() if m != results.get("reference", "aligned")]
    if ref is not None and tuned and all(r.get("task_mean") is not None and ref.get("task_mean") is not None
                                         and r["task_mean"] <= ref["task_mean"] + TIE for r in tuned):
        out.append("No method improved the task mean over the reference: the tasks were not learned with this "
                   "budget, so the comparison says little about task gains (raise `budget.examples_per_method`).")
    sizes = results.get("eval_sizes") or {}
    for key, label in (("harmful", "refusal"), ("benign", "over-refusal")):
        n = sizes.get(key)
        if n:
            out.append(f"The {label} rate is measured on {n} prompts: one prompt moves it by {1 / n:.3f}.")
    groups = (results.get("clusters") or {}).get("groups") if isinstance(results.get("clusters"), Mapping) else None
    if groups is not None and len(groups) == 1 and len(groups[0]) > 1:
        out.append(f"All {len(groups[0])} tasks formed one group (task cores overlap above tau), so the "
                   "pipelined SFT ran a single stage: this run does not exercise freezing earlier groups' cores.")
    seeds = results.get("seeds")
    if not seeds or len(seeds) < 2:
        out.append("One seed only: differences of a few points may be noise; rerun with other `seed` values "
                   "to see the spread.")
    missing = [m for m in DESCRIPTIONS if m not in results["methods"]]
    if missing:
        out.append("Methods not run: " + ", ".join(f"`{m}`" for m in missing) + ".")
    return out


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
    lines = ["## Single-task reference", "",
             "Each task's score when trained alone (its CPI-FT probe model), beside every method's final model:",
             "", *rows, ""]
    multi = (results["methods"].get("multitask_sft") or {}).get("task_mean")
    if multi is not None:
        gap = alone - multi
        lines += [f"Trained alone, the tasks average {_num(alone)}; `multitask_sft` reaches {_num(multi)} "
                  f"({_signed(-gap)}): " + ("a seesaw — training the tasks together costs them."
                                            if gap >= 0.05 else "no seesaw at this budget (gap under 0.05)."), ""]
    budget = results.get("single_task_budget") or {}
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


def early_warning_section(results: Mapping[str, Any]) -> list[str]:
    """Lines of the early-warning section: safety-core overlap of each task core vs the refusal it eroded."""
    ew = results.get("early_warning")
    if not ew:
        return []
    rows = ["| task | overlap with the safety core | refusal lost when trained alone |", "|---|---:|---:|"]
    rows += [f"| {t} | {_num(ew['safety_overlap'][t])} | {_signed(ew['refusal_drop'][t])} |" for t in ew["refusal_drop"]]
    r = ew.get("pearson")
    verdict = ("too few tasks (or no spread) for a correlation" if r is None else
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


def render_report(results: Mapping[str, Any], *, command: str | None = None,
                  images: tuple[str, ...] = ("tradeoff.png", "overlap.png")) -> str:
    """The text of report.md."""
    title = results.get("run") or "safe-cpift run"
    core = results.get("safety_core") or {}
    integrity = integrity_line(results)
    parts = [f"# {title}", ""]
    if command:
        parts += ["Produced by:", "", "```", command, "```", ""]
    seed = results.get("seed")
    parts += [f"Reference: `{results.get('reference', 'aligned')}`"
              + (f"; seed {seed}" if seed is not None else "") + ". Scores are on held-out data; "
              "refusal ↑ is the share of harmful prompts refused, over-refusal ↓ the share of benign "
              "look-alikes refused.", "",
              "## Results", "", methods_table(results), "",
              "Change against the reference:", "", delta_table(results), "",
              f"**{integrity}**" if core.get("intact") is True else f"**⚠ {integrity.upper()} ⚠**", ""]
    if core:
        parts += [f"(top_p {core.get('top_p')}, scope {core.get('scope')}"
                  + (f", scorer {core['scorer']}" if core.get("scorer") else "") + ")", ""]
    parts += safety_sets_section(results)
    general = general_table(results)
    if general:
        parts += ["## General capability (lm-eval)", "",
                  "Primary metric of each lm-eval suite of the recipe, on the same final models:", "", general, ""]
    parts += single_task_section(results)
    parts += stage_scores_section(results)
    parts += early_warning_section(results)
    parts += ["## How safe_cpift compares", "", *[f"- {s}" for s in comparison_sentences(results)], ""]
    clusters = results.get("clusters") or {}
    if clusters.get("groups"):
        parts += ["## Task groups", "", f"Groups (tau = {clusters.get('tau')}), in stage order: "
                  + "; ".join("[" + ", ".join(map(str, g)) + "]" for g in clusters["groups"]) + ".", ""]
        if clusters.get("safety_overlap"):
            parts += ["Overlap of each task core with the safety core: " + ", ".join(
                f"{k} {_num(v)}" for k, v in clusters["safety_overlap"].items()) + ".", ""]
    settings = {**{f"task cores {k}": v for k, v in (results.get("task_cores") or {}).items()},
                **(results.get("settings") or {})}
    if settings:
        parts += ["## Settings", "", ", ".join(f"{k} {v}" for k, v in settings.items()) + ".", ""]
    budget = results.get("budget") or {}
    if budget:
        parts += ["## Budget", ""]
        if budget.get("rule"):
            parts += [f"{budget['rule']}.", ""]
        if budget.get("examples_per_method") is not None:
            parts += [f"Examples per method (final fine-tuning): {budget['examples_per_method']}.", ""]
    if images:
        parts += ["## Plots", "", *[f"![{Path(i).stem}]({i})" for i in images], ""]
    parts += ["## What this run could not do", "", *[f"- {s}" for s in limitations(results)], "",
              "## Methods", "", *[f"- `{m}`: {DESCRIPTIONS.get(m, '')}" for m in results["methods"]], ""]
    return "\n".join(parts)


def write_report(
    results: Mapping[str, Any],
    out_dir: str | Path,
    *,
    overlap_png: str | Path | None = None,
    regions: Mapping[str, Any] | None = None,
    safety_region: Any | None = None,
    command: str | None = None,
    write_results: bool = True,
) -> list[str]:
    """Write results.json, report.md, tradeoff.png, overlap.png and MODEL_CARD.md into `out_dir`.

    Args:
        results (`Mapping`): the run's results (see the module docstring).
        out_dir (`str` or `Path`): destination directory (created if missing).
        overlap_png (`str` or `Path`, *optional*): an existing overlap figure to copy.
        regions (`Mapping[str, CoreRegion]`, *optional*): task cores; when given (and no
            `overlap_png`), overlap.png is drawn with `safe_cpift.cluster.plot_overlap`.
        safety_region (`CoreRegion`, *optional*): the safety core, drawn beside the task cores.
        command (`str`, *optional*): the command that produced the run, quoted in the report.
        write_results (`bool`, *optional*, defaults to `True`): also write results.json.

    Returns:
        `list[str]`: names of the files written.
    """
    from safe_cpift.model_card import model_card_text
    from safe_cpift.plots import plot_tradeoff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if write_results:
        atomic_write_json(out / "results.json", dict(results))
        written.append("results.json")
    images = []
    if plot_tradeoff(results, out / "tradeoff.png") is not None:
        images.append("tradeoff.png")
    if overlap_png is not None and Path(overlap_png).is_file():
        if Path(overlap_png).resolve() != (out / "overlap.png").resolve():
            tmp = out / ".overlap.png.tmp"
            shutil.copyfile(overlap_png, tmp)
            tmp.replace(out / "overlap.png")
        images.append("overlap.png")
    elif regions:
        from safe_cpift.cluster import plot_overlap

        plot_overlap(dict(regions), out / "overlap.png", protect=safety_region)
        images.append("overlap.png")
    atomic_write_text(out / "report.md", render_report(results, command=command, images=tuple(images)))
    atomic_write_text(out / "MODEL_CARD.md", model_card_text(results, command=command))
    written += [*images, "report.md", "MODEL_CARD.md"]
    if (results.get("safety_core") or {}).get("intact") is not True:
        logger.warning("%s", integrity_line(results))
    return written
