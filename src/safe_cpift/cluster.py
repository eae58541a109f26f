"""Task clustering for CPI-FT: how much task cores overlap, which tasks train together, in what order.

Two tasks whose core regions overlap strongly compete for the same parameters, so CPI-FT trains them
in the same stage; tasks with disjoint cores can be trained apart and fused later. Here:

* `overlap_matrix` — pairwise Jaccard `|A ∩ B| / |A ∪ B|` or overlap coefficient
  `|A ∩ B| / min(|A|, |B|)` between regions (counted over scalar entries of all tensors), with the
  safety core as the last row/column when given.
* `cluster_tasks` — groups = connected components of the graph with an edge between two tasks whose
  Jaccard is `>= tau`.
  **Stage order** (deterministic): larger groups first; groups of equal size in the order their
  first task was given; tasks inside a group in the order they were given.
* `plot_overlap` — `overlap.png`: Jaccard and overlap-coefficient heatmaps, safety row/column marked.

Conventions: an empty region has Jaccard and overlap 0 with every region (itself included); a
non-empty region has 1 with itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["overlap_matrix", "cluster_tasks", "plot_overlap", "intersection_size", "METRICS"]

METRICS = ("jaccard", "overlap")
SAFETY_LABEL = "safety"


def _size(region: Any) -> int:
    return int(sum(region.indices(n).numel() for n in region.names()))


def intersection_size(a: Any, b: Any) -> int:
    """Number of scalar entries selected by both regions `a` and `b` (summed over tensors)."""
    total = 0
    b_names = set(b.names())
    for name in a.names():
        if name not in b_names:
            continue
        ia, ib = a.indices(name), b.indices(name)
        if ia.numel() and ib.numel():
            total += int(torch.isin(ia, ib, assume_unique=True).sum())
    return total


def _with_protect(regions: Mapping[str, Any], protect: Any | None, protect_name: str) -> dict[str, Any]:
    if not isinstance(regions, Mapping):
        raise TypeError(f"`regions` must be a dict name -> CoreRegion, got {type(regions).__name__}")
    out = dict(regions)
    if protect is not None:
        if protect_name in out:
            raise ValueError(f"`protect_name` {protect_name!r} clashes with a task name; pass another `protect_name`")
        out[protect_name] = protect
    _check_same_model(out)
    return out


def _check_same_model(regions: Mapping[str, Any]) -> None:
    """Regions of different models (other tensor names or shapes) have no meaningful overlap."""
    items = [(n, r) for n, r in regions.items() if hasattr(r, "check_compatible")]
    if not items:
        return
    first_name, first = items[0]
    for name, region in items[1:]:
        try:
            first.check_compatible(region, check_dtype=False)
        except ValueError:
            fa, fb = first.fingerprint, region.fingerprint
            diff = next((n for n in sorted(fa.keys() | fb.keys()) if fa.get(n, [None])[0] != fb.get(n, [None])[0]), None)
            where = "" if diff is None else (f": `{diff}` is {fa.get(diff, ['absent'])[0]} in `{first_name}` but "
                                             f"{fb.get(diff, ['absent'])[0]} in `{name}`")
            raise ValueError(f"regions `{first_name}` and `{name}` belong to different models{where}; their overlap "
                             "means nothing, so compare regions extracted from one architecture") from None


def overlap_matrix(
    regions: Mapping[str, Any],
    metric: str = "jaccard",
    *,
    protect: Any | None = None,
    protect_name: str = SAFETY_LABEL,
) -> tuple[list[str], torch.Tensor]:
    """Pairwise overlap between regions.

    Args:
        regions (`dict[str, CoreRegion]`): named regions (e.g. one core per task).
        metric (`str`, *optional*, defaults to `"jaccard"`): `"jaccard"` (`|A∩B| / |A∪B|`) or `"overlap"`
            (the overlap coefficient `|A∩B| / min(|A|, |B|)`).
        protect (`CoreRegion`, *optional*): the safety core, added as the last row and column.
        protect_name (`str`, *optional*, defaults to `"safety"`): its label.

    Returns:
        `(names, matrix)`: the row/column labels and a symmetric float64 `torch.Tensor` of shape `(K, K)`.
    """
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
    all_regions = _with_protect(regions, protect, protect_name)
    names = list(all_regions)
    items = [all_regions[n] for n in names]
    sizes = [_size(r) for r in items]
    k = len(names)
    mat = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        mat[i, i] = 1.0 if sizes[i] else 0.0
        for j in range(i + 1, k):
            inter = intersection_size(items[i], items[j])
            if metric == "jaccard":
                union = sizes[i] + sizes[j] - inter
                value = inter / union if union else 0.0
            else:
                smaller = min(sizes[i], sizes[j])
                value = inter / smaller if smaller else 0.0
            mat[i, j] = mat[j, i] = value
    return names, mat


def cluster_tasks(regions: Mapping[str, Any], tau: float = 0.1) -> list[list[str]]:
    """Group tasks whose cores overlap: connected components of the graph `Jaccard >= tau`.

    Args:
        regions (`dict[str, CoreRegion]`): one core region per task, in the order the user gave them.
        tau (`float`, *optional*, defaults to `0.1`): edge threshold in `[0, 1]`. `tau = 0` puts every
            task in one group; `tau = 1` joins only tasks with identical (non-empty) cores.

    Returns:
        `list[list[str]]`: the groups in stage order — larger groups first, groups of equal size in
        the order their first task was given; tasks inside a group in the order given.
    """
    tau = float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"`tau` must be in [0, 1], got {tau}")
    names, jac = overlap_matrix(regions, "jaccard")
    if not names:
        raise ValueError("`regions` is empty; pass at least one task region")
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if float(jac[i, j]) >= tau:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    components: dict[int, list[int]] = {}
    for i in range(len(names)):
        components.setdefault(find(i), []).append(i)
    groups = sorted(components.values(), key=lambda members: (-len(members), members[0]))
    result = [[names[i] for i in members] for members in groups]
    logger.info("clustered %d tasks into %d groups at tau=%.3g: %s", len(names), len(result), tau, result)
    return result


def plot_overlap(
    regions: Mapping[str, Any],
    path: str | os.PathLike,
    protect: Any | None = None,
    *,
    protect_name: str = SAFETY_LABEL,
) -> Path:
    """Write a heatmap figure (Jaccard | overlap coefficient) of the regions' pairwise overlap.

    Args:
        regions (`dict[str, CoreRegion]`): named regions.
        path (`str` or `os.PathLike`): output image (e.g. `overlap.png`), written atomically.
        protect (`CoreRegion`, *optional*): the safety core, drawn as the last row/column and outlined.
        protect_name (`str`, *optional*, defaults to `"safety"`): its label.

    Returns:
        `Path`: the written file.
    """
    try:  # the object API with the Agg canvas: no pyplot, so the caller's backend is left alone
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as err:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plotting needs matplotlib: pip install 'safe-cpift[plot]'") from err
    from safe_cpift.io import atomic_write_bytes

    path = Path(path)
    k = len(regions) + (protect is not None)
    size = max(4.0, 0.6 * k + 2.5)
    fig = Figure(figsize=(2 * size, size), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(axes, METRICS, ("Jaccard", "overlap coefficient"), strict=True):
        names, mat = overlap_matrix(regions, metric, protect=protect, protect_name=protect_name)
        im = ax.imshow(mat.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_title(f"core overlap: {title}")
        if len(names) <= 12:
            for i in range(len(names)):
                for j in range(len(names)):
                    v = float(mat[i, j])
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if v > 0.6 else "white")
        if protect is not None:
            s = len(names) - 1
            for rect in (Rectangle((-0.5, s - 0.5), len(names), 1), Rectangle((s - 0.5, -0.5), 1, len(names))):
                rect.set(fill=False, edgecolor="red", linewidth=2)
                ax.add_patch(rect)
            for label in (ax.get_xticklabels()[s], ax.get_yticklabels()[s]):
                label.set(color="red", fontweight="bold")
        fig.colorbar(im, ax=ax, shrink=0.8)
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())
    return path
