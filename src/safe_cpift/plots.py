"""Plots of a run: the task-vs-safety trade-off (one labelled point per method)."""

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


def plot_tradeoff(results: Mapping[str, Any], path: str | Path, *, method: str = "safe_cpift") -> Path | None:
    """Write `tradeoff.png`: task mean (x) against refusal rate on harmful prompts (y).

    Uses matplotlib's Agg canvas directly (no pyplot state, no display). Methods missing either
    number are left out; `None` is returned (and nothing written) when no method has both.

    Args:
        results (`Mapping`): run results with ``methods``.
        path (`str` or `Path`): the image to write (atomically).
        method (`str`, *optional*): the method to highlight.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        logger.warning("tradeoff.png not drawn: matplotlib is missing (pip install 'safe-cpift[plot]')")
        return None
    points = [(name, r["task_mean"], r["refusal_rate"]) for name, r in results["methods"].items()
              if r.get("task_mean") is not None and r.get("refusal_rate") is not None]
    if not points:
        logger.warning("tradeoff.png not drawn: no method has both task_mean and refusal_rate")
        return None
    fig = Figure(figsize=(6, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    spare = iter(SPARE_COLORS * len(points))
    for name, x, y in points:
        highlight = name == method
        color = "tab:red" if highlight else COLORS.get(name) or next(spare)
        ax.scatter([x], [y], s=140 if highlight else 60, marker=MARKERS.get(name, "o"), zorder=3, color=color)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 5), fontsize=9,
                    fontweight="bold" if highlight else "normal")
    ax.set_xlabel("task mean on held-out tests (higher is better)")
    ax.set_ylabel("refusal rate on harmful prompts (higher is safer)")
    ax.set_xlim(-0.03, 1.08)
    ax.set_ylim(-0.03, 1.05)
    ax.grid(alpha=0.3)
    title = str(results.get("run") or "task gain vs safety")
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out
