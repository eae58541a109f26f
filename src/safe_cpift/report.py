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
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_cpift.io import atomic_write_json, atomic_write_text
from safe_cpift.model_card import model_card_text
from safe_cpift.report_sections import (
    early_warning_section,
    general_table,
    safety_sets_section,
    single_task_section,
    stage_scores_section,
)
from safe_cpift.report_tables import (
    DESCRIPTIONS,
    METHOD,
    _num,
    comparison_sentences,
    delta_table,
    integrity_line,
    limitations,
    methods_table,
    task_names,
)

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
