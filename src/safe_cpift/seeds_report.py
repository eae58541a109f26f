"""The report of a multi-seed run: mean ± sd of every method beside the per-seed values.

`aggregate` comes from `safe_cpift.pipeline.seeds.aggregate`; every number here is read from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_cpift.io import atomic_write_json, atomic_write_text
from safe_cpift.report_sections import no_correlation_reason, seesaw_verdict, stage_scores_section
from safe_cpift.report_tables import DESCRIPTIONS

__all__ = ["mean_sd", "seeds_table", "per_seed_table", "render_seeds_report", "write_seeds_report"]

COLUMNS = (("task_mean", "task mean ↑"), ("refusal_rate", "refusal ↑"), ("over_refusal_rate", "over-refusal ↓"))


def mean_sd(entry: Mapping[str, Any] | None, digits: int = 3) -> str:
    """`0.512 ± 0.034` (or `–` when the mean is missing)."""
    if not entry or entry.get("mean") is None:
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['sd']:.{digits}f}"


def _values(entry: Mapping[str, Any] | None) -> str:
    vals = (entry or {}).get("values") or []
    return " / ".join("–" if v is None else f"{v:.3f}" for v in vals) or "–"


def seeds_table(agg: Mapping[str, Any]) -> str:
    """Markdown: methods × (task mean, refusal, over-refusal, train s) as mean ± sd."""
    head = ["method", *[label for _, label in COLUMNS], "train s"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, m in agg["methods"].items():
        cells = [mean_sd(m.get(k)) for k, _ in COLUMNS] + [mean_sd(m.get("train_seconds"), 0)]
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def per_seed_table(agg: Mapping[str, Any]) -> str:
    """Markdown: the per-seed values behind every mean (in `completed_seeds` order)."""
    head = ["method", *[f"{label} per seed" for _, label in COLUMNS]]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for name, m in agg["methods"].items():
        rows.append(f"| `{name}` | " + " | ".join(_values(m.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(rows)


def tasks_table(agg: Mapping[str, Any]) -> str:
    """Markdown: tasks × (trained alone, each method), mean ± sd."""
    single = agg.get("single_task") or {}
    tasks = list(agg.get("tasks") or []) or sorted({t for m in agg["methods"].values() for t in m["task_scores"]})
    methods = [m for m in agg["methods"] if m != agg.get("reference", "aligned")]
    head = ["task", *(["trained alone"] if single else []), *[f"`{m}`" for m in methods]]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for t in tasks:
        cells = ([mean_sd(single.get(t))] if single else []) + \
                [mean_sd(agg["methods"][m]["task_scores"].get(t)) for m in methods]
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _seesaw_line(agg: Mapping[str, Any]) -> list[str]:
    single = agg.get("single_task") or {}
    multi = (agg["methods"].get("multitask_sft") or {}).get("task_mean") or {}
    if not single or multi.get("values") is None or any(s.get("values") is None for s in single.values()):
        return []
    n = len(multi["values"])
    alone = [sum(s["values"][i] for s in single.values()) / len(single) for i in range(n)]
    gaps = [a - m for a, m in zip(alone, multi["values"], strict=True)]
    mean_gap = sum(gaps) / n
    return [f"Seesaw: trained alone the tasks average {sum(alone) / n:.3f}, `multitask_sft` {multi['mean']:.3f}; "
            f"gap {mean_gap:+.3f} (per seed: {' / '.join(f'{g:+.3f}' for g in gaps)}) — "
            + seesaw_verdict(mean_gap, agg.get("single_task_budget") or {}), ""]


def render_seeds_report(agg: Mapping[str, Any], *, command: str | None = None,
                        images: tuple[str, ...] = ("tradeoff.png",)) -> str:
    """The text of the multi-seed report.md."""
    done, failed = agg.get("completed_seeds") or [], agg.get("failed_seeds") or []
    parts = [f"# {agg.get('run') or 'safe-cpift run'} — {len(done)} seed(s)", ""]
    if command:
        parts += ["Produced by:", "", "```", command, "```", ""]
    parts += [f"Seeds averaged: {', '.join(map(str, done))}. Each is a run directory `seed_<n>/` with its own "
              "report. Cells are mean ± sample sd over the seeds; the per-seed values follow.", ""]
    if failed:
        parts += ["**Failed seeds (not averaged in):** "
                  + "; ".join(f"seed {s}: {agg.get('errors', {}).get(str(s), 'failed')}" for s in failed), ""]
    parts += ["## Results", "", seeds_table(agg), "", "Per seed:", "", per_seed_table(agg), "",
              "## Tasks", "", tasks_table(agg), "", *_seesaw_line(agg)]
    budget = agg.get("single_task_budget") or {}
    if budget and not budget.get("matched"):
        parts += [f"Single-task budgets differ from `multitask_sft`'s: {budget.get('examples_per_task')} examples "
                  f"per task alone vs {budget.get('multitask_examples_per_task', 0):.0f} per task in the mix.", ""]
    stage_scores = agg.get("stage_scores") or {}
    if stage_scores:
        seed, rows = next(iter(stage_scores.items()))
        lines = stage_scores_section({"stage_scores": rows, "tasks": agg.get("tasks"), "methods": agg["methods"]})
        parts += [lines[0] + f" (seed {seed}; every seed's own report has its table)", *lines[1:]]
    ew = agg.get("early_warning")
    if ew:
        r = ew.get("pearson")
        parts += ["## Early warning", "", "Core overlap with the safety core vs refusal lost by each task trained "
                  f"alone, over {ew['pairs']} (task, seed) pairs: Pearson r = "
                  + ("–" if r is None else f"{r:+.2f}") + " (per seed: "
                  + ", ".join(f"{s} {'–' if v is None else f'{v:+.2f}'}" for s, v in ew["per_seed"].items()) + ")."
                  + ("" if r is not None else " " + _sentence(no_correlation_reason(
                      ew["pairs"], ew.get("max_refusal_drop"), ew.get("min_refusal_drop")))), ""]
    cores = agg.get("safety_core") or {}
    if cores:
        parts += ["## Safety core", "", *[f"- seed {s}: {c.get('entries')} entries, "
                                          + ("intact" if c.get("intact") else "**NOT intact**")
                                          for s, c in cores.items() if c], ""]
    groups = agg.get("clusters") or {}
    if groups:
        parts += ["## Task groups", "", *[f"- seed {s}: " + "; ".join("[" + ", ".join(g) + "]" for g in gs or [])
                                          for s, gs in groups.items()], ""]
    if images:
        parts += ["## Plot", "", *[f"![{Path(i).stem}]({i})" for i in images], ""]
    parts += ["## Methods", "", *[f"- `{m}`: {DESCRIPTIONS.get(m, '')}" for m in agg["methods"]], ""]
    return "\n".join(parts)


def write_seeds_report(agg: Mapping[str, Any], out_dir: str | Path, *, command: str | None = None) -> list[str]:
    """Write results.json, tradeoff.png (mean ± sd) and report.md of a multi-seed run into `out_dir`."""
    from safe_cpift.plots import plot_tradeoff

    out = Path(out_dir)
    atomic_write_json(out / "results.json", dict(agg))
    images = ("tradeoff.png",) if plot_tradeoff(agg, out / "tradeoff.png") is not None else ()
    atomic_write_text(out / "report.md", render_seeds_report(agg, command=command, images=images))
    return ["results.json", *images, "report.md"]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."
