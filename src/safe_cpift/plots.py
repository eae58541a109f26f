"""Plots of a run: the task-vs-safety trade-off (one labelled point per method, ±sd over seeds)."""

from __future__ import annotations

import io
import logging
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safe_cpift.io import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["plot_tradeoff"]

MARKERS = {"aligned": "s", "safe_cpift": "*"}
COLORS = {"aligned": "tab:gray", "multitask_sft": "tab:blue", "sequential_sft": "tab:orange",
          "safety_mix_sft": "tab:green", "cpift": "tab:purple", "safe_cpift": "tab:red"}
SPARE_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _value(entry: Any) -> tuple[float | None, float]:
    """(value, error bar) of a plain number or a multi-seed `{"mean", "sd"}` entry."""
    if isinstance(entry, Mapping):
        return entry.get("mean"), float(entry.get("sd") or 0.0)
    return entry, 0.0


def plot_tradeoff(results: Mapping[str, Any], path: str | Path, *, method: str = "safe_cpift") -> Path | None:
    """Write `tradeoff.png`: task mean (x) against refusal of harmful prompts (y), and beside it
    over-refusal of benign look-alikes (x) against refusal (y), so a method that refuses everything
    cannot look safe.

    Works for one run (numbers) and for several seeds (`{"mean", "sd"}` entries: points at the mean
    with ±sd error bars). Uses matplotlib's Agg canvas directly (no pyplot state, no display).
    Methods missing task mean or refusal are left out; `None` is returned (nothing written) when no
    method has both.

    Args:
        results (`Mapping`): run results with ``methods`` (one run or the multi-seed aggregate).
        path (`str` or `Path`): the image to write (atomically).
        method (`str`, *optional*): the method to highlight.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        logger.warning("tradeoff.png not drawn: matplotlib is missing (pip install 'safe-cpift[plot]')")
        return None
    points = []
    for name, r in results["methods"].items():
        (x, xerr), (y, yerr), (o, oerr) = (_value(r.get(k)) for k in ("task_mean", "refusal_rate", "over_refusal_rate"))
        if x is not None and y is not None:
            points.append((name, x, xerr, y, yerr, o, oerr))
    if not points:
        logger.warning("tradeoff.png not drawn: no method has both task_mean and refusal_rate")
        return None
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_over = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, sharey=None)
    spare = iter(SPARE_COLORS * len(points))
    for name, x, xerr, y, yerr, o, oerr in points:
        highlight = name == method
        color = "tab:red" if highlight else COLORS.get(name) or next(spare)
        style = dict(s=140 if highlight else 60, marker=MARKERS.get(name, "o"), zorder=3, color=color)
        for axis, px, pxerr in ((ax, x, xerr), (ax_over, o, oerr)):
            if px is None:
                continue
            if pxerr or yerr:
                axis.errorbar([px], [y], xerr=[pxerr], yerr=[yerr], fmt="none", ecolor=color, alpha=0.6,
                              capsize=3, zorder=2)
            axis.scatter([px], [y], **style)
            axis.annotate(name, (px, y), textcoords="offset points", xytext=(6, 5), fontsize=9,
                          fontweight="bold" if highlight else "normal")
    ax.set_xlabel("task mean on held-out tests (higher is better)")
    ax_over.set_xlabel("over-refusal of benign look-alikes (lower is better)")
    for axis in (ax, ax_over):
        axis.set_ylabel("refusal rate on harmful prompts (higher is safer)")
        axis.set_xlim(-0.03, 1.08)
        axis.set_ylim(-0.03, 1.05)
        axis.grid(alpha=0.3)
    seeds = results.get("completed_seeds")
    title = str(results.get("run") or "task gain vs safety")
    if seeds:
        title += f" — mean ± sd over seeds {', '.join(map(str, seeds))}"
    fig.suptitle(textwrap.fill(title, 110), fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out
