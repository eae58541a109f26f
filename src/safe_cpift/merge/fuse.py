"""CPI-FT fusion: transplant each task's core exactly, SLERP everything else, protect the safety core.

For every tensor (streamed one at a time, so peak memory is a few tensors; two float32 or two bfloat16
tasks written to a directory with the compiled kernels go chunk by chunk, `merge.streamed`, bit for bit
the same):

1. **Non-core entries** — SLERP across the task models (`safe_cpift.merge.slerp`):
   * N = 1: the single task model's values.
   * N = 2: `slerp(t, θ_first, θ_second)` with the tasks in the order given (`t` is the weight of the
     second task; at the default `t = 0.5` the result is bitwise independent of the order).
   * N ≥ 3, or any N with `weights`: the weighted N-model SLERP `spherical_mean(θ_i, w_i)` (the
     weighted spherical mean of the directions, coefficients applied to the original tensors), which
     equals `slerp(t, ·, ·)` for two models with weights `(1 - t, t)`. Without `weights` all models
     weigh the same, so `t` must be `0.5` for N ≥ 3 (there is no single "second model" for `t` to
     weigh); the models are summed in sorted task-name order, which makes the result bitwise
     independent of the order they were given in (and equal to 1e-6 under any relabelling).
   A per-layer schedule (`t_schedule`) may replace `t` for N = 2 without `weights`.
2. **Task cores** — each task's core entries are copied exactly from that task's own model. An entry
   in several task cores goes to the task with the larger `|θ_task − θ_base|` there; ties go to
   the task whose name sorts first.
3. **Protected region** (the safety core) — always wins: its entries equal `protect_source`
   (defaults to `base`) exactly, whatever the task cores say.

Dtypes (docs/dtypes.md): every floating tensor is computed in float32 (float64 if an input is
float64) and written in the output `dtype`; `"auto"` (the default) is, per tensor, the widest dtype
of the inputs — the checkpoints' own dtype when they agree — so transplanted and protected entries
are bit-exact copies. A narrower output dtype rounds them; the manifest counts those entries
(`counts.core_rounded`).

Regions are checked against the fingerprints (names, shapes, dtypes) of the models they are applied
to, and all models must share tensor names and shapes.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safe_cpift.io import (
    DEFAULT_SHARD_BYTES,
    atomic_directory,
    atomic_write_json,
    dtype_name,
    state_dict_fingerprint,
)
from safe_cpift.merge import kernels
from safe_cpift.merge.background import BackgroundWriter, BufferPool
from safe_cpift.merge.slerp import DOT_THRESHOLD, slerp, slerp_weights, spherical_mean
from safe_cpift.merge.streamed import PairTensor, stream_pairs
from safe_cpift.merge.writer import PlannedShardWriter
from safe_cpift.models import as_state_dict

logger = logging.getLogger(__name__)

__all__ = ["fuse", "fuse_with_manifest", "FUSION_MANIFEST", "RULES"]

FUSION_MANIFEST = "fusion_manifest.json"
FORMAT = "safe-cpift-fusion/1"
RULES = {
    "non_core": "N=2 without weights: slerp(t, first, second) in the given task order; N>=3 or weights: "
    "weighted spherical (Karcher) mean of the directions, coefficients applied to the tensors, over tasks in "
    "sorted-name order (equal weights by default; equals slerp(t) for N=2 and weights (1-t, t)); N=1: the task model",
    "core": "each task's core entries copied exactly from its own model",
    "conflict": "entry in several task cores -> larger |theta_task - theta_base| wins; ties -> task name sorting first",
    "protect": "protected entries copied exactly from protect_source (default: base); always win",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")

TSchedule = Sequence[float] | Callable[[str], float]


def _fingerprint(sd: Any) -> dict[str, tuple[list[int], str]]:
    return sd.fingerprint() if hasattr(sd, "fingerprint") else state_dict_fingerprint(sd)


def _describe(x: Any) -> str:
    if isinstance(x, (str, os.PathLike)):
        return str(x)
    if isinstance(x, torch.nn.Module):
        return f"<in-memory {type(x).__name__}>"
    return "<in-memory state dict>"


def _region_summary(region: Any) -> dict[str, Any]:
    out = {}
    for key in ("num_selected", "fraction", "top_p", "scope", "scorer"):
        value = getattr(region, key, None)
        if value is not None:
            out[key] = float(value) if key == "fraction" else value
    return out


def _version() -> str:
    from safe_cpift import __version__

    return __version__


def _check_t(t: float, what: str) -> float:
    t = float(t)
    if not 0.0 <= t <= 1.0 or math.isnan(t):
        raise ValueError(f"`{what}` must be in [0, 1], got {t}")
    return t


def _make_schedule(t: float, t_schedule: TSchedule | None, names: list[str]) -> Callable[[str], float]:
    if t_schedule is None:
        return lambda name: t
    if callable(t_schedule):
        return lambda name: _check_t(t_schedule(name), f"t_schedule({name!r})")
    if isinstance(t_schedule, (str, bytes, Mapping)) or not isinstance(t_schedule, Sequence) or not t_schedule:
        raise ValueError("`t_schedule` must be a callable name -> t or a non-empty list of floats (one per layer gradient point)")
    points = [_check_t(v, "t_schedule") for v in t_schedule]
    layers = [int(m.group(1)) for n in names if (m := _LAYER_RE.search(n))]
    num_layers = max(layers) + 1 if layers else 1

    def by_layer(name: str) -> float:
        match = _LAYER_RE.search(name)
        if match is None or len(points) == 1:
            return t if match is None else points[0]
        # mergekit-style gradient: the points are spread evenly over the layers, linear in between
        x = int(match.group(1)) / max(num_layers - 1, 1) * (len(points) - 1)
        lo = min(int(math.floor(x)), len(points) - 2)
        frac = x - lo
        return points[lo] * (1 - frac) + points[lo + 1] * frac

    return by_layer


def _check_models(base_fp: dict, task_fps: dict[str, dict], protect_fp: dict | None) -> None:
    others = {f"task `{n}`": fp for n, fp in task_fps.items()}
    if protect_fp is not None:
        others["`protect_source`"] = protect_fp
    for label, fp in others.items():
        missing = [n for n in base_fp if n not in fp]
        if missing:
            raise ValueError(f"tensor `{missing[0]}` of the base model is missing from the model of {label} "
                             "(all models must share the same architecture)")
        extra = [n for n in fp if n not in base_fp]
        if extra:
            raise ValueError(f"tensor `{extra[0]}` of the model of {label} is not in the base model "
                             "(all models must share the same architecture)")
        dtype_diffs = []
        for name, (shape, dtype) in base_fp.items():
            if list(fp[name][0]) != list(shape):
                raise ValueError(f"tensor `{name}` has shape {list(shape)} in the base model but "
                                 f"{list(fp[name][0])} in the model of {label}")
            if fp[name][1] != dtype:
                dtype_diffs.append(name)
        if dtype_diffs:
            first = dtype_diffs[0]
            logger.info("%d tensors of the model of %s differ in dtype from the base model (e.g. %s: %s vs %s); "
                        "fusion computes in float32 and writes the output dtype", len(dtype_diffs), label, first,
                        fp[first][1], base_fp[first][1])


def _check_region(region: Any, fp: dict, label: str) -> None:
    if not hasattr(region, "indices") or not hasattr(region, "check_compatible"):
        raise TypeError(f"{label} must be a CoreRegion, got {type(region).__name__}")
    fp = {n: v for n, v in fp.items() if getattr(torch, v[1], torch.int64).is_floating_point}  # weights only
    try:
        try:  # indices depend on shapes only: a bf16 copy of the model is fine (dtype changes are logged)
            region.check_compatible(fp, check_dtype=False)
        except TypeError:
            region.check_compatible(fp)
    except ValueError as err:
        raise ValueError(f"{label} does not match the model it is applied to: {err}") from err


def _member(sorted_pool: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Boolean mask: which of `values` occur in the sorted tensor `sorted_pool` (binary search).

    numpy's `searchsorted` narrows each search with the previous key's result, ~5x faster than
    torch's when the keys are sorted too (core indices are)."""
    if not sorted_pool.numel() or not values.numel():
        return torch.zeros(values.shape, dtype=torch.bool)
    pool, keys = sorted_pool.numpy(), values.to(sorted_pool.dtype).numpy()
    kern = kernels.kernels(load=False)
    if kern is not None and _ascending(keys):  # a merge walk (`merge.kernels.member`)
        mask = np.zeros(keys.shape, dtype=np.bool_)
        kern.member(keys, pool, mask)
        return torch.from_numpy(mask)
    pos = np.searchsorted(pool, keys)
    np.minimum(pos, pool.size - 1, out=pos)
    return torch.from_numpy(pool[pos] == keys)


def _ascending(x: np.ndarray) -> bool:
    return x.size < 2 or bool((x[1:] >= x[:-1]).all())


def _resolve_conflicts(idx: torch.Tensor, score: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner per contested entry: larger score, ties to the lower rank (sorted task name)."""
    score = score.nan_to_num(nan=-math.inf)
    # lexicographic (idx asc, score desc, rank asc) by stable sorts, least significant key first
    perm = torch.sort(rank, stable=True).indices
    perm = perm[torch.sort(-score[perm], stable=True).indices]
    perm = perm[torch.sort(idx[perm], stable=True).indices]
    idx, rank = idx[perm], rank[perm]
    first = torch.ones(len(idx), dtype=torch.bool)
    first[1:] = idx[1:] != idx[:-1]
    return idx[first], rank[first]


def _output_dtypes(dtype: str | torch.dtype, fps: list[dict]) -> dict[str, str]:
    """Per tensor, the dtype written: `auto` = the widest floating dtype of the inputs; non-float tensors keep theirs."""
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype) or not getattr(torch, dtype).is_floating_point:
            raise ValueError(f"`dtype` must be `auto` or a floating dtype such as `bfloat16`, got {dtype!r}")
        dtype = getattr(torch, dtype)
    out = {}
    for name, (_, base_dtype) in fps[0].items():
        dtypes = [getattr(torch, fp[name][1]) for fp in fps]
        if not dtypes[0].is_floating_point:
            out[name] = base_dtype
            continue
        if dtype == "auto":
            widest = dtypes[0]
            for d in dtypes[1:]:
                widest = torch.promote_types(widest, d)
            out[name] = dtype_name(widest)
        else:
            out[name] = dtype_name(dtype)
    return out


def _work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _transplant(name, flat, base_flat, task_ts, regions, counts) -> list[torch.Tensor]:
    """Copy every task's core entries into `flat`; entries in several cores go to the larger |Δθ|."""
    dtype = flat.dtype
    idx_list = [region.indices(name).to(torch.long) for region in regions]
    if len(task_ts) == 2 and _transplant_compiled(flat, base_flat, task_ts, idx_list, counts):
        return [i for i in idx_list if i.numel()]
    contested = [torch.zeros(len(i), dtype=torch.bool) for i in idx_list]
    for i, j in itertools.combinations(range(len(idx_list)), 2):
        hit = _member(idx_list[j], idx_list[i])
        if hit.any():
            contested[i] |= hit
            contested[j] |= _member(idx_list[i], idx_list[j])
    c_idx, c_score, c_rank = [], [], []
    for rank, (idx, cmask) in enumerate(zip(idx_list, contested, strict=True)):
        if not idx.numel():
            continue
        task_flat = task_ts[rank].reshape(-1)
        own = idx[~cmask]
        flat[own] = task_flat[own].to(dtype)
        counts["per_task"][rank] += own.numel()
        counts["transplanted"] += own.numel()
        if cmask.any():
            shared = idx[cmask]
            c_idx.append(shared)
            c_score.append((task_flat[shared].double() - base_flat[shared].double()).abs())
            c_rank.append(torch.full((shared.numel(),), rank, dtype=torch.long))
    if c_idx:
        entries, winner = _resolve_conflicts(torch.cat(c_idx), torch.cat(c_score), torch.cat(c_rank))
        counts["conflicts"] += entries.numel()
        counts["transplanted"] += entries.numel()
        for rank in winner.unique().tolist():
            sel = entries[winner == rank]
            flat[sel] = task_ts[rank].reshape(-1)[sel].to(dtype)
            counts["per_task"][rank] += sel.numel()
    return [i for i in idx_list if i.numel()]


def _transplant_compiled(flat, base_flat, task_ts, idx_list, counts) -> bool:
    """`_transplant` for two float32 tasks by one merge walk (`merge.kernels.transplant2`); False (and
    nothing done) when the kernels are not loaded or a tensor is not float32."""
    kern = kernels.kernels(load=False)
    arrays = [kernels.as_float32(x) for x in (flat, base_flat, *task_ts)]
    if kern is None or any(a is None for a in arrays):
        return False
    won = kernels.transplant(kern, *arrays, idx_list[0].numpy(), idx_list[1].numpy())  # first, second, both
    _count_transplanted(counts, won)
    return True


def _count_transplanted(counts: dict, won: np.ndarray) -> None:
    """Add a compiled transplant's (won by the first task, by the second, contested) to `counts`."""
    counts["per_task"][0] += int(won[0])
    counts["per_task"][1] += int(won[1])
    counts["transplanted"] += int(won[0] + won[1])
    counts["conflicts"] += int(won[2])


def _fuse_pair(name, base_t, task_ts, order_given, regions, pidx, protect_t, t, dot_threshold, counts,
               pool) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """Two float32 tasks in one compiled pass (`merge.kernels.fuse_pair`): the SLERP weights from the
    dot products, then per block the weighted sum, the cores (`_transplant`'s rule) and the protected
    entries at `pidx` (from `protect_t`), the same output and counts (protected entries in a core
    included) as those steps one after another.
    Returns (output, the tasks' non-empty core indices), or None (nothing done) where it does not
    apply: kernels not loaded, a tensor not contiguous float32, or t = 0 or 1 (an exact copy)."""
    kern = kernels.kernels(load=False)
    src = protect_t if protect_t is not None and pidx.numel() else base_t
    arrays = [kernels.as_float32(x) for x in (base_t, *task_ts, src)]
    if kern is None or any(a is None for a in arrays):
        return None
    g0, g1 = (task_ts[i] for i in order_given)
    weights = slerp_weights(t, g0, g1, dot_threshold=dot_threshold)
    if weights is None:
        return None
    out = pool.take(g0.numel()) if pool is not None else torch.empty(g0.numel(), dtype=torch.float32)
    idx_list = [region.indices(name).to(torch.long) for region in regions]
    base_np, t0, t1, src_np = arrays
    g0_np, g1_np = ((t0, t1)[i] for i in order_given)
    won = kernels.fuse_pair(kern, out.numpy(), g0_np, g1_np, *weights, base_np, t0, t1, idx_list[0].numpy(),
                            idx_list[1].numpy(), src_np, pidx.numpy())
    _count_transplanted(counts, won)
    counts["protected_over_task"] += int(won[3])
    return out.view(g0.shape), [i for i in idx_list if i.numel()]


def _pair_tensors(names, sd_base, sd_tasks, sd_protect, protect, regions, order_given, schedule,
                  out_dtypes) -> list[PairTensor]:
    """The tensors `merge.streamed` fuses: two tasks, base and protect source all float32 written as
    float32, or all bfloat16 written as bfloat16 (contiguous, on the CPU), with 0 < t < 1; none when the
    kernels are not loaded. The others take the per-tensor pass (`_fuse_tensor`), which gives these
    the same output bit for bit."""
    if kernels.kernels(load=False) is None:
        return []
    pairs = []
    for name in names:
        t = schedule(name)
        want = {"float32": np.float32, "bfloat16": np.int16}.get(out_dtypes[name])
        if want is None or t in (0.0, 1.0):
            continue
        base_t = sd_base[name]
        ia, ib, ip = _index_arrays(name, [*regions, protect])
        src_t = sd_protect[name] if sd_protect is not None and ip.size else base_t
        arrays = [kernels.as_kernel_array(x) for x in (base_t, *(sd[name] for sd in sd_tasks), src_t)]
        if any(a is None or a.dtype != want for a in arrays) or not arrays[0].size:
            continue
        base, t0, t1, src = arrays
        g0, g1 = ((t0, t1)[i] for i in order_given)
        pairs.append(PairTensor(name, t, g0, g1, base, t0, t1, ia, ib, src, ip))
    return pairs


def _index_arrays(name: str, regions: list[Any]) -> list[np.ndarray]:
    """Each region's sorted indices of `name` (an empty array for a `None` region): views of the stored
    int32 indices (`CoreRegion.raw_indices`, no copy: all tensors' indices stay alive while streaming),
    or int64 where any is not int32 (or a region type overrides `indices`)."""
    from safe_cpift.regions import CoreRegion

    got = []
    for region in regions:
        if region is None:
            got.append(torch.zeros(0, dtype=torch.int32))
        elif type(region).indices is CoreRegion.indices:  # a CoreRegion that reads its indices as stored
            got.append(region.raw_indices(name))
        else:
            got.append(region.indices(name))
    arrays = [torch.as_tensor(i).reshape(-1).numpy() for i in got]
    if any(a.dtype != np.int32 for a in arrays):
        arrays = [a.astype(np.int64, copy=False) for a in arrays]
    return arrays


def _stream(pairs: list[PairTensor], writer: PlannedShardWriter, threads: int, dot_threshold: float,
            counts: dict) -> None:
    """`streamed.stream_pairs` with a progress bar; its counts added to `counts`."""
    from tqdm.auto import tqdm

    with tqdm(total=len(pairs), desc="fuse", unit="tensor", disable=None, leave=False) as bar:
        lock = threading.Lock()

        def done(name: str) -> None:
            with lock:
                bar.update(1)

        won = stream_pairs(kernels.kernels(load=False), pairs, writer, num_threads=threads,
                           dot_threshold=dot_threshold, on_tensor_done=done)
    _count_transplanted(counts, won)
    counts["protected_over_task"] += int(won[3])
    counts["protected"] += sum(x.ip.size for x in pairs)


def _check_weights(weights: Mapping[str, float] | None, given: list[str], t: float,
                   t_schedule: TSchedule | None) -> dict[str, float] | None:
    """Task weights normalised to sum 1, keyed like `given`; `None` when not given."""
    if weights is None:
        return None
    if not isinstance(weights, Mapping) or set(weights) != set(given):
        missing = sorted(set(given) - set(weights or {})) if isinstance(weights, Mapping) else given
        extra = sorted(set(weights) - set(given)) if isinstance(weights, Mapping) else []
        raise ValueError(f"`weights` must have one weight per task in `task_models` (missing: {missing}, "
                         f"unknown: {extra})")
    out = {}
    for name in given:
        try:
            w = float(weights[name])
        except (TypeError, ValueError):
            raise ValueError(f"`weights[{name!r}]` must be a number, got {weights[name]!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"`weights[{name!r}]` must be finite and >= 0, got {w}")
        out[name] = w
    total = math.fsum(out.values())
    if not total > 0:
        raise ValueError("`weights` are all 0: give at least one task a positive weight")
    if t != 0.5 or t_schedule is not None:
        raise ValueError("pass either `weights` or `t`/`t_schedule`, not both (for two tasks, weights "
                         "(1 - t, t) are SLERP(t))")
    return {name: w / total for name, w in out.items()}


def _fuse_tensor(name, base_t, task_ts, order_given, regions, protect, protect_t, t_name, dot_threshold, counts,
                 out_dtype, weights=None, pool=None):
    """One output tensor in `out_dtype`; `task_ts`/`regions`/`weights` are in sorted task-name order.

    Computed in float32 (float64 when an input is float64): SLERP, then the exact copies of task cores
    and protected entries; cast to `out_dtype` once at the end. A two-task float32 output is written
    into a buffer of `pool` (`background.BufferPool`) when one is given.
    """
    if not base_t.is_floating_point():
        if any(not torch.equal(base_t, x) for x in task_ts):
            logger.warning("non-float tensor %s differs between models; keeping the base value", name)
        return base_t.clone()
    out_dtype = getattr(torch, out_dtype)
    dtype = _work_dtype(base_t.dtype, out_dtype, *(x.dtype for x in task_ts))
    task_ts = [x.to(dtype) for x in task_ts]
    n = len(task_ts)
    pidx = protect.indices(name).to(torch.long) if protect is not None else torch.zeros(0, dtype=torch.long)
    fused = None
    if n == 2 and weights is None and dtype == out_dtype == torch.float32:
        fused = _fuse_pair(name, base_t, task_ts, order_given, regions, pidx, protect_t, t_name, dot_threshold,
                           counts, pool)
    if fused is not None:  # SLERP, transplant and protected copy in one compiled pass
        out, task_idx = fused
        flat = out.view(-1)
    else:
        if n == 1:
            out = task_ts[0].clone()
        elif n == 2 and weights is None:
            a, b = (task_ts[i] for i in order_given)
            reuse = pool is not None and dtype == out_dtype == torch.float32
            out = slerp(t_name, a, b, dot_threshold=dot_threshold, out=pool.take(a.numel()) if reuse else None)
        else:
            out = spherical_mean(task_ts, weights, dot_threshold=dot_threshold)
        out = out.to(dtype).contiguous()
        flat = out.view(-1)
        task_idx = _transplant(name, flat, base_t.reshape(-1), task_ts, regions, counts)
    exact = list(task_idx)
    if pidx.numel():
        if fused is None:  # the fused pass copied these and counted those in a core
            _copy_protected(flat, protect_t, pidx, task_idx, counts)
        counts["protected"] += pidx.numel()
        exact.append(pidx)
    if out_dtype == dtype:
        return out
    written = out.to(out_dtype)
    if exact:  # entries that must be copies: count those the output dtype cannot hold (NaN stays NaN)
        idx = torch.cat(exact).unique()
        before, after = flat[idx], written.view(-1)[idx].to(dtype)
        counts["core_rounded"] += int(((after != before) & ~(after.isnan() & before.isnan())).sum())
    return written


def _copy_protected(flat: torch.Tensor, protect_t: torch.Tensor, pidx: torch.Tensor, task_idx: list[torch.Tensor],
                    counts: dict) -> None:
    """Copy the protected entries `pidx` of `protect_t` into `flat`; count those that are also core entries."""
    kern, dst, src = kernels.kernels(load=False), kernels.as_float32(flat), kernels.as_float32(protect_t)
    if kern is not None and dst is not None and src is not None:
        kern.copy_at(dst, src, pidx.numpy())
    else:
        flat[pidx] = protect_t.reshape(-1)[pidx].to(flat.dtype)
    over = torch.zeros(pidx.numel(), dtype=torch.bool)
    for idx in task_idx:
        over |= _member(idx, pidx)
    counts["protected_over_task"] += int(over.sum())


def _copy_side_files(base: Any, target: Path) -> list[str]:
    copied = []
    if isinstance(base, (str, os.PathLike)) and Path(base).is_dir():
        for f in sorted(Path(base).iterdir()):
            if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) and f.name != FUSION_MANIFEST:
                shutil.copy2(f, target / f.name)
                copied.append(f.name)
    elif isinstance(base, torch.nn.Module) and hasattr(base, "config"):
        base.config.save_pretrained(target)
        copied.append("config.json")
        gen = getattr(base, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(target)
            copied.append("generation_config.json")
    if "config.json" not in copied:
        logger.warning("base has no config.json; %s holds weights only (not loadable by from_pretrained)", target)
    return copied


def _stamp_config_dtype(target: Path, out_dtypes: dict[str, str]) -> None:
    """Make config.json name the dtype the weights were written in (transformers' `dtype="auto"` reads it)."""
    import json

    config = target / "config.json"
    floats = {d for d in out_dtypes.values() if getattr(torch, d).is_floating_point}
    if not config.is_file() or len(floats) != 1:
        return
    data = json.loads(config.read_text())
    written = floats.pop()
    changed = False
    for key in ("dtype", "torch_dtype"):
        if key in data and data[key] != written:
            data[key] = written
            changed = True
    if changed:
        atomic_write_json(config, data)


def fuse_with_manifest(
    base: Any,
    task_models: Mapping[str, Any],
    task_regions: Mapping[str, Any],
    protect: Any | None = None,
    protect_source: Any | None = None,
    t: float = 0.5,
    t_schedule: TSchedule | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    dot_threshold: float = DOT_THRESHOLD,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    metadata: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype = "auto",
    num_threads: int | None = None,
) -> tuple[dict[str, torch.Tensor] | Path, dict[str, Any]]:
    """Like `fuse`, but also returns the fusion manifest (counts, rules, inputs) as a dict."""
    if not isinstance(task_models, Mapping) or not task_models:
        raise ValueError("`task_models` must be a non-empty dict task name -> model, state dict or checkpoint dir")
    if not isinstance(task_regions, Mapping) or set(task_regions) != set(task_models):
        missing = sorted(set(task_models) - set(task_regions or {}))
        extra = sorted(set(task_regions or {}) - set(task_models))
        raise ValueError(f"`task_regions` must have one region per task in `task_models` "
                         f"(missing: {missing}, unknown: {extra})")
    if num_threads is not None and int(num_threads) < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    given = list(task_models)
    order = sorted(given)
    t = _check_t(t, "t")
    norm_weights = _check_weights(weights, given, t, t_schedule)
    if len(order) >= 3 and (t != 0.5 or (t_schedule is not None)):
        raise ValueError(f"`t`={t} / `t_schedule` only apply to two models; with {len(order)} tasks give "
                         "`weights` (one per task) instead, or leave `t` at 0.5 for equal weights")
    sorted_weights = None if norm_weights is None else [norm_weights[n] for n in order]
    if protect_source is not None and protect is None:
        logger.warning("`protect_source` is ignored without a `protect` region")
    sd_base = as_state_dict(base)
    sd_tasks = [as_state_dict(task_models[n]) for n in order]
    sd_protect = as_state_dict(protect_source) if protect_source is not None else sd_base
    base_fp = _fingerprint(sd_base)
    task_fps = {n: _fingerprint(sd) for n, sd in zip(order, sd_tasks, strict=True)}
    protect_fp = _fingerprint(sd_protect) if protect_source is not None else None
    _check_models(base_fp, task_fps, protect_fp)
    regions = [task_regions[n] for n in order]
    for n, region in zip(order, regions, strict=True):
        _check_region(region, task_fps[n], f"region of task `{n}`")
    if protect is not None:
        _check_region(protect, protect_fp or base_fp, "`protect` region")
    names = list(base_fp)
    schedule = _make_schedule(t, t_schedule, names)
    order_given = [order.index(n) for n in given]
    out_dtypes = _output_dtypes(dtype, [base_fp, *task_fps.values(), *([protect_fp] if protect_fp else [])])
    kernels.worth_it(sum(math.prod(shape) for shape, _ in base_fp.values()))  # loads them for a big model
    counts: dict[str, Any] = {"transplanted": 0, "conflicts": 0, "protected": 0, "protected_over_task": 0,
                              "core_rounded": 0, "per_task": [0] * len(order)}

    def tensors(order: list[str], pool: BufferPool | None = None):
        from tqdm.auto import tqdm

        for name in tqdm(order, desc="fuse", unit="tensor", disable=None, leave=False):
            yield name, _fuse_tensor(
                name, sd_base[name], [sd[name] for sd in sd_tasks], order_given, regions, protect,
                sd_protect[name] if protect is not None else None, schedule(name), dot_threshold, counts,
                out_dtypes[name], sorted_weights, pool)

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "inputs": {"base": _describe(base), "tasks": {n: _describe(task_models[n]) for n in given},
                   "protect_source": _describe(protect_source if protect_source is not None else base)},
        "regions": {"tasks": {n: _region_summary(task_regions[n]) for n in given},
                    "protect": _region_summary(protect) if protect is not None else None},
        "rule": RULES,
        "t": t,
        "t_schedule": None if t_schedule is None else ("callable" if callable(t_schedule) else list(t_schedule)),
        "weights": norm_weights,
        "dot_threshold": dot_threshold,
        "dtype": {"requested": dtype if isinstance(dtype, str) else dtype_name(dtype),
                  "written": sorted(set(out_dtypes.values())), "compute": "float32 (float64 for float64 inputs)"},
        "task_order": {"given": given, "sorted": order},
        "num_tensors": len(names),
        "versions": {"safe_cpift": _version(), "torch": torch.__version__},
    }
    if metadata:
        manifest["extra"] = dict(metadata)

    def finish_counts() -> None:
        per_task = dict(zip(order, counts.pop("per_task"), strict=True))
        counts["per_task"] = per_task
        manifest["counts"] = counts
        if counts["core_rounded"]:
            logger.warning("%d transplanted/protected entries were rounded by the output dtype %s; use `dtype='auto'` "
                           "to keep them bit-exact", counts["core_rounded"], manifest["dtype"]["written"])

    if out_dir is None:
        with kernels.threads(num_threads):
            result = dict(tensors(names))
        finish_counts()
        return result, manifest
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        # shapes are the base's, dtypes the output's: plan the shards up front, stream each tensor
        writer = PlannedShardWriter(tmp, {n: (base_fp[n][0], out_dtypes[n]) for n in names},
                                    max_shard_bytes=max_shard_bytes)
        # two float32 or two bfloat16 tasks: streamed into the files chunk by chunk (`merge.streamed`); the rest per tensor
        pairs = [] if len(order) != 2 or sorted_weights is not None else _pair_tensors(
            names, sd_base, sd_tasks, sd_protect if protect is not None else None, protect, regions, order_given,
            schedule, out_dtypes)
        streamed = {x.name for x in pairs}
        rest = [n for n in names if n not in streamed]
        float32 = [math.prod(base_fp[n][0]) for n in rest if out_dtypes[n] == "float32"]
        pool = BufferPool(max(float32)) if float32 else None  # outputs reused once written
        # writing tensor i overlaps computing tensor i + 1; largest first (each written at its planned
        # place), so the last write, which nothing overlaps, is a small one
        largest_first = sorted(rest, key=lambda n: -math.prod(base_fp[n][0]))
        background = BackgroundWriter(writer, on_written=pool.give if pool is not None else None)
        try:
            with kernels.threads(num_threads) as threads:
                for name, tensor in tensors(largest_first, pool):
                    background.add(name, tensor)
                background.close()
                if pairs:
                    _stream(pairs, writer, threads, dot_threshold, counts)
        except BaseException:
            background.abort()
            writer.abort()  # close the open shard; atomic_directory removes the temp dir
            raise
        shards = writer.close()
        manifest["side_files"] = _copy_side_files(base, tmp)
        _stamp_config_dtype(tmp, out_dtypes)
        manifest["shards"] = [p.name for p in shards]
        finish_counts()
        atomic_write_json(tmp / FUSION_MANIFEST, manifest)
    logger.info("fused %d tensors into %s (%d transplanted, %d conflicts, %d protected)", len(names), out_dir,
                counts["transplanted"], counts["conflicts"], counts["protected"])
    return Path(out_dir), manifest


def fuse(
    base: Any,
    task_models: Mapping[str, Any],
    task_regions: Mapping[str, Any],
    protect: Any | None = None,
    protect_source: Any | None = None,
    t: float = 0.5,
    t_schedule: TSchedule | None = None,
    out_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor] | Path:
    """Fuse task models into one: task cores transplanted exactly, the rest SLERPed, `protect` kept.

    See the module docstring for the exact rules (also recorded in the manifest under `rule`).

    Args:
        base (model, state dict or checkpoint dir): the model the tasks were tuned from; defines the
            tensor names/shapes, scores core conflicts (`|θ_task − θ_base|`) and supplies config and
            tokenizer files to the output directory.
        task_models (`dict[str, model | state dict | checkpoint dir]`): one fine-tuned model per task.
        task_regions (`dict[str, CoreRegion]`): each task's core, same keys as `task_models`.
        protect (`CoreRegion`, *optional*): the region that always wins (the safety core).
        protect_source (model, state dict or checkpoint dir, *optional*, defaults to `base`): where the
            protected entries are copied from.
        t (`float`, *optional*, defaults to `0.5`): SLERP factor for two tasks (weight of the second task
            in the given order); must stay `0.5` for three or more tasks (use `weights`).
        t_schedule (`list[float]` or callable, *optional*): per-layer `t` for two tasks — a list of points
            spread over the decoder layers (linear in between; non-layer tensors use `t`), or a
            function tensor name -> t.
        out_dir (`str` or `os.PathLike`, *optional*): write a `save_pretrained` directory here
            (atomically, sharded safetensors + config/tokenizer files of `base` + `fusion_manifest.json`).
            When `None`, return the fused state dict instead.
        **kwargs: `weights` (`dict[str, float]`: one non-negative weight per task, normalised to sum 1, for
            the weighted N-model SLERP of the non-core entries; not together with `t`/`t_schedule`),
            `dot_threshold`, `overwrite`, `max_shard_bytes`, `metadata`, `dtype` (`"auto"`, the
            default: per tensor the widest input dtype, so core entries are bit-exact; or e.g. `"bfloat16"`),
            and `num_threads` (threads of the compiled float32 passes with the `fast` extra, default
            torch's thread count; the result is the same for any number).

    Returns:
        `dict[str, torch.Tensor]` when `out_dir` is `None`, else the `Path` of the written directory.

    Raises:
        ValueError: mismatched tensor names/shapes between models (names the tensor and the model), a
            region that does not fit its model, or an invalid `t`.
    """
    result, _ = fuse_with_manifest(base, task_models, task_regions, protect, protect_source, t, t_schedule,
                                   out_dir, **kwargs)
    return result
