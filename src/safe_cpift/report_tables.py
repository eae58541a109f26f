"""The numbers of a run as text: method tables, the integrity line, comparison sentences, limitations.

Shared by report.md (`safe_cpift.report`), the model card (`safe_cpift.model_card`), the CLI summary
and the multi-seed report; every sentence is generated from the numbers in `results`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from safe_cpift.pipeline.spec import PEER_BASELINES  # opt-in methods: not listed as missing when not run

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
    "lora_sft": "LoRA SFT on multitask_sft's rows, merged (the model Safe LoRA projects)",
    "safe_lora": "peer baseline Safe LoRA (Hsu et al. 2024): lora_sft's adapter projected onto the alignment subspace",
    "protected_sft": "multi-task SFT with safe_cpift's protections and no CPI-FT pipeline (what the pipeline adds)",
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
        out.append("One seed only: differences of a few points may be noise; run with `--seeds 0 1 2` to see "
                   "the spread.")
    missing = [m for m in DESCRIPTIONS if m not in results["methods"] and m not in PEER_BASELINES]
    if missing:
        out.append("Methods not run: " + ", ".join(f"`{m}`" for m in missing) + ".")
    return out
