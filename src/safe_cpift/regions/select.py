"""Exact top-p selection over a stream of score chunks, in one pass and O(k) memory.

The selection order is (score descending, tensor order, flat index ascending); tensor order is the
natural sort of the names, so ties break the same way for any kind of source.

How one pass stays exact and cheap (`scope="global"`):
1. a strided block sample of the scores (about 1M entries, from every tensor, weighted by tensor
   size) estimates a *floor* with roughly 1.25·k entries above it;
2. the pass keeps only entries >= floor (a pool of about 1.25·k), cutting the pool back to the exact
   best k whenever it reaches 2·k (after which later entries must beat the k-th best strictly);
3. if fewer than k entries reached the floor (the sample misled), the pass is repeated without a
   floor, falling back to the plain streaming top-k. The result is exact either way.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch

from safe_cpift.memory import without_huge_pages
from safe_cpift.regions import fused, fused_scan

logger = logging.getLogger(__name__)

CHUNK = 1 << 18  # elements scored at once (1 MiB of float32: stays in L2 between sub, abs, compare)
SAMPLE_BUDGET = 1 << 20
SAMPLE_BLOCK = 8192
RADIX_FLOOR_MIN = 1 << 15  # sampled scores from which `estimate_floor` uses the radix select (its fixed cost: ~0.2 ms)
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


class ScoreSource(Protocol):
    names: list[str]
    numels: list[int]

    def chunk(self, tid: int, start: int, stop: int) -> torch.Tensor: ...

    def scorer(self, tid: int, stop: int) -> Callable[[int, int, torch.Tensor], torch.Tensor]: ...


def layer_index(name: str) -> int | None:
    """Decoder layer number in a parameter name (`model.layers.3.mlp...` -> 3), else None."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def target_count(top_p: float, total: int, at_least_one: bool = True) -> int:
    """Entries selected by a top-p fraction of `total`: round half up (at least one if asked)."""
    k = int(math.floor(top_p * total + 0.5))
    return min(total, max(1 if (at_least_one and total) else 0, k))


def kth_largest(scores: torch.Tensor, k: int) -> float:
    """The k-th largest value of a 1-D tensor without NaN (k >= 1), in O(n): numpy's `partition` for
    float32 on the CPU (~10x faster than `torch.kthvalue` on one thread), else `kthvalue`."""
    n = scores.numel()
    if scores.dtype == torch.float32 and scores.device.type == "cpu":
        return float(np.partition(scores.contiguous().numpy(), n - k)[n - k])
    return float(torch.kthvalue(scores, n - k + 1).values)


def indices_above(scores: torch.Tensor, value: float, strict: bool = False) -> torch.Tensor:
    """Flat int64 indices of the entries `>= value` (`> value` when `strict`), ascending.

    Same result as `torch.nonzero(scores >= value)`, where the value is compared as a scalar of the
    scores' dtype; for contiguous float32 CPU scores numpy's comparison and `flatnonzero` do it
    ~3x faster on one thread (this is most of a region extraction's compute with a warm cache).
    """
    if scores.dtype == torch.float32 and scores.device.type == "cpu" and scores.is_contiguous() and scores.dim() == 1:
        arr = scores.numpy()
        v = np.float32(value)
        return torch.from_numpy(np.flatnonzero(arr > v if strict else arr >= v))
    mask = scores > value if strict else scores >= value
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


def _ascending(idx: torch.Tensor) -> torch.Tensor:
    """`idx` sorted; pieces fed in (tensor, offset) order are already sorted, which is checked in O(n)."""
    if idx.numel() < 2 or bool((idx[1:] > idx[:-1]).all()):
        return idx
    return torch.sort(idx).values


def _check_finite(scores: torch.Tensor) -> None:
    if torch.isnan(scores).any():
        raise ValueError("a score is NaN (a NaN or infinite weight in the models?); cannot rank entries")


def stable_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted ascending) of the k largest scores; ties go to the lower index."""
    n = scores.numel()
    if k >= n:
        return torch.arange(n, dtype=torch.int64)
    if k <= 0:
        return torch.empty(0, dtype=torch.int64)
    _check_finite(scores)
    thr = kth_largest(scores, k)
    gt = torch.nonzero(scores > thr).squeeze(1)
    eq = torch.nonzero(scores == thr).squeeze(1)[: k - gt.numel()]
    return torch.sort(torch.cat([gt, eq])).values


def prefilter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of a superset of the k best entries of a chunk (about 2k of them), found cheaply.

    Every dropped entry is beaten by at least k entries of the chunk itself (checked exactly), so
    dropping it cannot change the top k. Falls back to `stable_topk` when the sample misleads.
    """
    n = scores.numel()
    sample = scores[:: max(1, n // 65536)]
    m = sample.numel()
    rank = min(m, max(1, math.ceil(2 * k * m / n)))
    cut = float(torch.kthvalue(sample, m - rank + 1).values)
    idx = indices_above(scores, cut)
    if k <= idx.numel() <= max(4 * k, 1 << 20):
        return idx
    return stable_topk(scores, k)


class GlobalTopK:
    """Exact streaming top-k over chunks fed in tie-break order (tensor id, then offset).

    Args:
        k: entries to keep. floor: optional estimate; entries below it are not kept (if fewer than
            k entries reach it, `complete` is False and the caller must rerun without a floor).
    """

    def __init__(self, k: int, floor: float | None = None) -> None:
        self.k = k
        self.floor = floor
        self.pieces: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (tid, flat idx, scores)
        self.count = 0
        self.threshold: float | None = None  # proven: k kept entries rank above anything <= it later

    def add(self, tid: int, offset: int, scores: torch.Tensor) -> None:
        if self.k <= 0:
            return
        if self.threshold is not None:
            # later entries lose ties against the pool, so only strictly larger scores can enter
            idx = indices_above(scores, self.threshold, strict=True)
        elif self.floor is not None:
            idx = indices_above(scores, self.floor)
        else:
            n = scores.numel()
            idx = prefilter(scores, self.k) if n > 2 * self.k else torch.arange(n)
        self._append(tid, offset, idx, scores[idx])

    def add_candidates(self, tid: int, offset: int, idx: torch.Tensor, values: torch.Tensor) -> None:
        """Like `add` for the entries of a chunk already cut at this pool's floor (or any lower value):
        chunk-relative indices `idx` (ascending) and their scores `values`."""
        if self.k <= 0:
            return
        if self.threshold is not None:
            keep = indices_above(values, self.threshold, strict=True)
            idx, values = idx[keep], values[keep]
        self._append(tid, offset, idx, values)

    def _append(self, tid: int, offset: int, idx: torch.Tensor, values: torch.Tensor) -> None:
        if idx.numel() == 0:
            return
        small = offset + int(idx[-1]) < 2**31
        self.pieces.append((tid, (idx + offset).to(torch.int32 if small else torch.int64), values))
        self.count += idx.numel()
        if self.count >= 2 * self.k or (self.floor is None and self.threshold is None and self.count >= self.k):
            self._reduce()

    @property
    def complete(self) -> bool:
        return self.threshold is not None or self.floor is None or self.count >= self.k

    def _reduce(self) -> None:
        scores = torch.cat([p[2] for p in self.pieces])
        _check_finite(scores)
        thr = kth_largest(scores, self.k)
        del scores
        kept = []  # per piece: (tid, idx, scores, positions of ties) of the entries >= thr
        above = 0
        for tid, idx, s in self.pieces:
            sel = indices_above(s, thr)
            if sel.numel():
                vals = s[sel]
                ties = torch.nonzero(vals == thr).squeeze(1)
                above += sel.numel() - ties.numel()
                kept.append((tid, idx[sel], vals, ties))
        ties_left = self.k - above  # ties at the threshold: the earliest (tensor, index) win
        pieces = []
        for tid, idx, vals, ties in kept:
            if ties.numel() > ties_left:
                m = torch.ones(idx.numel(), dtype=torch.bool)
                m[ties[ties_left:]] = False
                idx, vals = idx[m], vals[m]
            ties_left -= min(ties_left, ties.numel())
            if idx.numel():
                pieces.append((tid, idx, vals))
        self.pieces = pieces
        self.count = self.k
        self.threshold = thr

    def result(self) -> dict[int, torch.Tensor]:
        """Selected flat indices (int64, sorted) per tensor id."""
        if not self.complete:
            raise RuntimeError("fewer than k entries reached the floor; rerun without it")
        if self.count > self.k:
            self._reduce()
        out: dict[int, list[torch.Tensor]] = {}
        for tid, idx, _ in self.pieces:
            out.setdefault(tid, []).append(idx)
        return {tid: _ascending(torch.cat(parts).to(torch.int64)) for tid, parts in out.items()}


def sample_scores(src: ScoreSource, budget: int = SAMPLE_BUDGET) -> list[tuple[int, torch.Tensor, float]]:
    """Blocks of scores from every tensor: (tensor id, sampled scores, weight per sampled entry)."""
    total = sum(src.numels)
    g = torch.Generator().manual_seed(0)
    out = []
    prefetch = getattr(src, "prefetch", None)
    if prefetch is not None:
        src.prefetch = False  # random blocks: no read-ahead
    for tid, n in enumerate(src.numels):
        want = min(n, max(256, round(budget * n / total)))
        if want >= n:
            out.append((tid, src.chunk(tid, 0, n).clone(), 1.0))
            continue
        blocks = max(1, math.ceil(want / SAMPLE_BLOCK))
        size = want // blocks
        starts = sorted(torch.randint(0, n - size + 1, (blocks,), generator=g).tolist())
        parts = [src.chunk(tid, s, s + size).clone() for s in starts]
        out.append((tid, torch.cat(parts), n / (size * blocks)))
    if prefetch is not None:
        src.prefetch = prefetch
    return out


def estimate_floor(samples: list[tuple[int, torch.Tensor, float]], target: float) -> float | None:
    """Highest score value with an estimated `target` entries at or above it (None: keep all).

    With the compiled kernels loaded and at least `RADIX_FLOOR_MIN` scores, a weighted radix select over the
    sample (`fused.weighted_floor_bits`; the same value as the partition and sort below)."""
    parts = [s.reshape(-1).to(torch.float32).numpy() for _, s, _ in samples]
    values = np.concatenate(parts, out=without_huge_pages(np.empty(sum(p.size for p in parts), np.float32)))
    part_weight = np.array([w for _, _, w in samples], dtype=np.float64)  # per sampled entry of each part
    sizes = np.array([p.size for p in parts], dtype=np.int64)
    ends = np.cumsum(sizes)  # entry j of `values` belongs to part searchsorted(ends, j, "right")
    m = values.size
    total = float(part_weight @ sizes)
    if target >= total:
        return None
    if fused.kernels(load=False) is not None and m >= RADIX_FLOOR_MIN and not (values.view(np.uint32) > 0x7F800000).any():
        bits = fused.weighted_floor_bits(values.view(np.int32), ends, part_weight, target)  # no NaN, no sign bit
        return None if bits is None else float(np.array([bits], dtype=np.int32).view(np.float32)[0])
    scores = torch.from_numpy(values)
    # only the top of the sample matters: sort a head of it (1.5x the expected rank), twice as much
    # until the target weight is inside it
    head = min(m, int(1.5 * target * m / total) + 1024)
    while True:
        values, order = _top(scores, head)
        cum = np.cumsum(part_weight[np.searchsorted(ends, order.numpy(), side="right")])
        pos = int(np.searchsorted(cum, target))
        if pos < values.numel():
            return float(values[pos])
        if head >= m:
            return None
        head = min(m, 2 * head)


def _top(scores: torch.Tensor, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of at least the `head` largest scores (all those tied with the last one),
    descending, tied values in any order. numpy's `partition` + a sort of the head is ~5x faster
    than `torch.topk` on one thread."""
    m = scores.numel()
    if scores.dtype == torch.float32 and not bool(torch.isnan(scores).any()):  # NaN: torch ranks it first
        arr = scores.numpy()
        part = np.flatnonzero(arr >= np.partition(arr, m - head)[m - head]) if head < m else np.arange(m)
        order = part[np.argsort(-arr[part], kind="stable")]
        return torch.from_numpy(arr[order]), torch.from_numpy(order)
    return torch.topk(scores, head) if head < m else torch.sort(scores, descending=True)


def _margin(k: int) -> float:
    return 1.25 * k + 5 * math.sqrt(k) + 64


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, progress: bool) -> Any:
    """A tqdm bar over `total` scored entries (shown on terminals only), or a no-op one when
    `progress` is False: importing `tqdm.auto` costs ~0.1 s once per process."""
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="param", unit_scale=True, desc="scoring", disable=None)


def iter_chunks(src: ScoreSource, tids: list[int] | None = None, progress: bool = True):
    """Yield (tensor id, offset, score chunk) in tie-break order, with a tqdm bar over entries."""
    tids = list(range(len(src.names))) if tids is None else tids
    bar = progress_bar(sum(src.numels[t] for t in tids), progress)
    try:
        for tid in tids:
            n = src.numels[tid]
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                yield tid, start, src.chunk(tid, start, stop)
                bar.update(stop - start)
    finally:
        bar.close()


def iter_candidates(src: ScoreSource, pool: GlobalTopK, threads: int, progress: bool = True
                    ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield (tensor id, offset, chunk-relative indices, scores) of the entries that can still enter
    `pool` (>= its floor, or > its threshold once it has one), in tie-break order. Chunks are scored
    by torch and cut by numpy on `threads` worker threads (both release the GIL), a bounded window
    of chunks ahead of the consumer, each cut at the pool's bar when it was submitted."""
    local = threading.local()

    def work(score: Callable, start: int, stop: int, value: float, strict: bool) -> tuple[torch.Tensor, torch.Tensor]:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = torch.empty(CHUNK, dtype=torch.float32)
        scores = score(start, stop, buf)
        idx = indices_above(scores, value, strict)
        return idx, scores[idx]

    def jobs() -> Iterator[tuple[int, int, int, tuple]]:
        for tid, n in enumerate(src.numels):
            for start in range(0, n, CHUNK):
                stop = min(n, start + CHUNK)
                bar_now = (pool.floor, False) if pool.threshold is None else (pool.threshold, True)
                yield tid, start, stop, (src.scorer(tid, stop), start, stop, *bar_now)

    bar = progress_bar(sum(src.numels), progress)
    window: deque = deque()
    try:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="safe-cpift-score") as pool_x:
            try:
                for tid, start, stop, args in jobs():
                    window.append((tid, start, stop, pool_x.submit(work, *args)))
                    if len(window) > 2 * threads:
                        t, s0, s1, fut = window.popleft()
                        yield (t, s0, *fut.result())
                        bar.update(s1 - s0)
                while window:
                    t, s0, s1, fut = window.popleft()
                    yield (t, s0, *fut.result())
                    bar.update(s1 - s0)
            finally:
                for *_, fut in window:
                    fut.cancel()
    finally:
        bar.close()


def _fused_select(src: ScoreSource, k: int, floor: float, threads: int,
                  progress: bool) -> tuple[dict[int, torch.Tensor], dict] | None:
    """The global top k by the one-pass fused scan (`regions.fused_scan`), or None where it does not
    apply (no kernels, a tensor that is not float32 or bfloat16 in both models) or gave up (the floor
    misled)."""
    total = sum(src.numels)
    get_readers = getattr(src, "raw_readers", None)
    if get_readers is None or not fused.worth_it(total):
        return None
    readers = get_readers()
    if readers is None:
        return None
    bar = progress_bar(total, progress)
    try:
        got = fused_scan.select_top_k(readers, src.numels, k, floor, threads, expected=int(_margin(k)), bar=bar)
    finally:
        bar.close()
    if got is None:
        logger.info("sampled floor %.6g misled the fused scan; streaming selection instead", floor)
        return None
    return got[0], {"threshold": got[1]}


def _select_global(src: ScoreSource, top_p: float, progress: bool,
                   threads: int = 1) -> tuple[dict[int, torch.Tensor], dict]:
    total = sum(src.numels)
    k = target_count(top_p, total)
    if k >= total:
        return {t: torch.arange(n) for t, n in enumerate(src.numels) if n}, {}
    floor = estimate_floor(sample_scores(src), _margin(k))
    if floor is not None:
        done = _fused_select(src, k, floor, threads, progress)
        if done is not None:
            return done
    pool = GlobalTopK(k, floor)
    if floor is not None and hasattr(src, "scorer") and threads > 1:
        for tid, off, idx, values in iter_candidates(src, pool, threads, progress):
            pool.add_candidates(tid, off, idx, values)
    else:
        for tid, off, s in iter_chunks(src, progress=progress):
            pool.add(tid, off, s)
    if not pool.complete:
        logger.info("sampled floor %.6g kept only %d of %d entries; second pass without it", floor, pool.count, k)
        pool = GlobalTopK(k)
        for tid, off, s in iter_chunks(src, progress=progress):
            pool.add(tid, off, s)
    return pool.result(), {"threshold": pool.threshold}


def _select_tensor(src: ScoreSource, top_p: float, progress: bool) -> dict[int, torch.Tensor]:
    ks = [target_count(top_p, n, at_least_one=False) for n in src.numels]
    samples = {tid: (tid, s, w) for tid, s, w in sample_scores(src)}
    pools = {t: GlobalTopK(k, estimate_floor([samples[t]], _margin(k)) if 0 < k < n else None)
             for t, (k, n) in enumerate(zip(ks, src.numels, strict=True))}
    for tid, off, s in iter_chunks(src, progress=progress):
        pools[tid].add(tid, off, s)
    redo = [t for t, p in pools.items() if not p.complete]
    for t in redo:
        pools[t] = GlobalTopK(ks[t])
    for tid, off, s in iter_chunks(src, redo, progress=False):
        pools[tid].add(tid, off, s)
    out: dict[int, torch.Tensor] = {}
    for pool in pools.values():
        out.update(pool.result())
    return out


def _select_layer(src: ScoreSource, top_p: float, progress: bool) -> tuple[dict[int, torch.Tensor], dict]:
    layers = [layer_index(n) for n in src.names]
    if all(x is None for x in layers):
        raise ValueError(
            "`scope='layer'` needs decoder layers named like `model.layers.N.` (none found); "
            "use `scope='global'` or `scope='tensor'`"
        )
    sums: dict[int, float] = {}
    sizes: dict[int, int] = {}
    for tid, layer in enumerate(layers):
        if layer is not None:
            sizes[layer] = sizes.get(layer, 0) + src.numels[tid]
    tids = [t for t, layer in enumerate(layers) if layer is not None]
    for tid, _off, s in iter_chunks(src, tids, progress):
        sums[layers[tid]] = sums.get(layers[tid], 0.0) + float(s.sum(dtype=torch.float64))
    ranked = sorted(sums, key=lambda i: (-sums[i], i))
    goal = top_p * sum(src.numels)
    chosen: list[int] = []
    covered = 0
    for layer in ranked:
        if covered >= goal and chosen:
            break
        chosen.append(layer)
        covered += sizes[layer]
    out = {t: torch.arange(src.numels[t]) for t, layer in enumerate(layers) if layer in chosen and src.numels[t]}
    return out, {"layers": sorted(chosen), "layer_scores": {str(i): sums[i] for i in sorted(sums)}}


def select(src: ScoreSource, top_p: float, scope: str, progress: bool = True,
           num_threads: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Top-p selection over a score source. Returns (sorted int64 indices per name, extra metadata).

    `num_threads` (default: `torch.get_num_threads()`) worker threads score and cut the chunks of a
    `global` selection; the result is the same for any number.
    """
    threads = torch.get_num_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    if scope == "global":
        picked, info = _select_global(src, top_p, progress, threads)
    elif scope == "tensor":
        picked, info = _select_tensor(src, top_p, progress), {}
    elif scope == "layer":
        picked, info = _select_layer(src, top_p, progress)
    else:
        raise ValueError(f"`scope` must be 'global', 'tensor' or 'layer', got {scope!r}")
    return {src.names[t]: idx for t, idx in picked.items()}, info
