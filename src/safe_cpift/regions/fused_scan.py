"""One-pass exact global top-k of |θ_tuned − θ_base| over float32 / bfloat16 pairs, with compiled kernels.

`select_top_k` is what `regions.select` runs for a `global` selection when every tensor is float32
or bfloat16 (the same in both models) and the kernels of `regions.fused` are loaded:

1. the tensors are cut into chunks, taken in order by `threads` worker threads as each gets free;
   a worker takes a chunk of each model (views of the checkpoint files mapped into memory, or of
   in-memory tensors) and keeps the index and score of every entry at or above the sampled
   `floor` (`Kernels.cut`; the GIL is released in both);
2. an exact radix select over the candidates' bit patterns finds the k-th largest score;
3. one pass over the chunks in tensor order keeps the entries above it and, of those equal to it,
   the earliest in (tensor, index) order — the tie-break of `regions.select` — writing each
   tensor's indices (int32 unless a tensor has 2^31 entries or more) into one array.

It gives up (returns None) when the floor kept fewer than k entries or more than `MAX_POOL` × k (the
sample misled); the caller then runs the plain streaming selection, which is exact either way.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from safe_cpift.memory import without_huge_pages
from safe_cpift.regions import fused

CHUNK = 1 << 20  # entries per chunk (4 MiB of float32 per model; views of the mapped files, so no copy)
MAX_POOL = 2.0  # give up when the candidates exceed this many times k (memory stays O(k))

Reader = Callable[[int, int, np.ndarray], np.ndarray]
RAW = {"float32": np.float32, "bfloat16": np.int16}  # what a reader returns for each dtype
Part = tuple[np.ndarray, np.ndarray]  # (int32 indices in the chunk, scores) of one chunk's candidates


class _Scan:
    """The chunks of one scan, handed out in order to whichever worker asks next, and the
    candidates found in each (a chunk's slot stays None until it is done)."""

    def __init__(self, readers: Sequence[tuple[Reader, Reader, str]], numels: Sequence[int], floor: float,
                 chunk: int, limit: int, bar: object | None) -> None:
        self.readers, self.floor, self.chunk, self.limit, self.bar = readers, np.float32(floor), chunk, limit, bar
        self.jobs = [(t, s, min(n, s + chunk)) for t, n in enumerate(numels) for s in range(0, n, chunk)]
        self.parts: list[Part | None] = [None] * len(self.jobs)
        self._next = itertools.count()  # next() of a C iterator is atomic under the GIL
        self._found = 0
        self._lock = threading.Lock()
        self.over = False

    def work(self, share: int) -> None:
        """A worker: cut chunks until none is left (or the candidates passed the limit). Candidates
        go into arenas of this worker (a new, twice larger one when the current one is full), and
        each chunk's slot gets views of them: no copy, one allocation per arena."""
        kern = fused.kernels(load=False)
        assert kern is not None
        bufs = {k: (np.empty(self.chunk, dtype=v), np.empty(self.chunk, dtype=v)) for k, v in RAW.items()}
        size = share + self.chunk
        idx, val, used = _arena(size), _arena(size, np.float32), 0
        for i in self._next:
            if i >= len(self.jobs) or self.over:
                return
            tid, start, stop = self.jobs[i]
            if idx.size - used < stop - start:  # room for a whole chunk of candidates
                size = 2 * idx.size
                idx, val, used = _arena(size), _arena(size, np.float32), 0
            read_b, read_t, dtype = self.readers[tid]
            buf_b, buf_t = bufs[dtype]
            a, b = read_b(start, stop, buf_b), read_t(start, stop, buf_t)
            m = int(kern.cut(a, b, self.floor, idx[used:], val[used:]))  # float32, or bfloat16 as int16 bits
            self.parts[i] = (idx[used:used + m], val[used:used + m])
            used += m
            if self.bar is not None:
                self.bar.update(stop - start)
            with self._lock:
                self._found += m
                self.over = self.over or self._found > self.limit


def _arena(size: int, dtype: type = np.int32) -> np.ndarray:
    """A fresh buffer kept out of transparent huge pages (`memory.without_huge_pages`): the candidates and
    the picks, ~36 MB for 1% of 2 x 1 GB, are the largest fresh memory of an extraction."""
    return without_huge_pages(np.empty(size, dtype=dtype))


def select_top_k(readers: Sequence[tuple[Reader, Reader, str]], numels: Sequence[int], k: int, floor: float,
                 threads: int = 1, *, expected: int | None = None, chunk: int | None = None,
                 bar: object | None = None) -> tuple[dict[int, torch.Tensor], float] | None:
    """The exact top k of |b − a| over float32 / bfloat16 tensor pairs, ties to the earliest (tensor, index).

    Args:
        readers: per tensor, two thread-safe functions `(start, stop, buf) -> array` giving entries
            [start, stop) of the base and the tuned tensor (`TensorSource.mapped_reader`), and their
            dtype, `"float32"` or `"bfloat16"` (int16 bit patterns).
        numels: entries per tensor. k: entries to select (>= 1). floor: every selected score is
            expected to be >= it (`select.estimate_floor`).
        threads: worker threads. expected: candidates expected at the floor (sizes the first arenas;
            default 1.25 k). chunk: entries per kernel call (default `CHUNK`). bar: a tqdm bar updated with the entries scanned.

    Returns:
        (sorted indices per tensor id, int32 unless a tensor has >= 2^31 entries; the k-th largest
        score), or None when the floor kept
        fewer than k entries or more than `MAX_POOL` × k (rerun without the fused scan).
    """
    kern = fused.kernels()
    if kern is None:
        raise RuntimeError("the fused scan needs numba: pip install 'safe-cpift[fast]'")
    expected = int(expected if expected is not None else 1.25 * k)
    scan = _Scan(readers, numels, floor, chunk or CHUNK, int(MAX_POOL * k), bar)
    workers = max(1, min(threads, len(scan.jobs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="safe-cpift-scan") as pool:
        for fut in [pool.submit(scan.work, expected // workers) for _ in range(workers)]:
            fut.result()
        parts = [(scan.jobs[i], p) for i, p in enumerate(scan.parts) if p is not None and p[0].size]
        if scan.over or sum(p[0].size for _, p in parts) < k:
            return None
        threshold, greater = fused.kth_largest_bits([v.view(np.int32) for _, (_, v) in parts], k)
        picked = _arena(k, np.int32 if max(numels) < 2**31 else np.int64)
        spans = _pick(kern, parts, np.int32(threshold), k - greater, picked, pool, workers)
    bounds: dict[int, list[int]] = {}  # tensor id -> [first, end) in `picked`
    for ((tid, _, _), _), (first, end) in zip(parts, spans, strict=True):  # chunks in (tensor, index) order
        if end > first:
            bounds.setdefault(tid, [first, end])[1] = end
    assert not bounds or max(hi for _, hi in bounds.values()) == k, (bounds, k)
    del parts, scan.parts
    out = {tid: torch.from_numpy(picked[lo:hi]) for tid, (lo, hi) in bounds.items()}
    return out, float(np.array([threshold], dtype=np.int32).view(np.float32)[0])



def _pick(kern: fused.Kernels, parts: list[tuple[tuple[int, int, int], Part]], threshold: np.int32, ties: int,
          picked: np.ndarray, pool: ThreadPoolExecutor, workers: int) -> np.ndarray:
    """Write into `picked` the entries above `threshold` and the first `ties` equal to it, in chunk
    order (offset by each chunk's start), on `workers` threads: a tally per chunk gives each chunk
    its place in `picked` and its share of the ties, then the chunks are picked side by side.
    Returns each chunk's [first, end) in `picked`."""
    sizes = np.cumsum([p[0].size for _, p in parts])
    cuts = [0, *np.searchsorted(sizes, [sizes[-1] * j / workers for j in range(1, workers)]).tolist(), len(parts)]

    def run(each: Callable[[int], object]) -> None:  # each(i) for every chunk, a span of chunks per thread
        futures = [pool.submit(lambda lo, hi: [each(i) for i in range(lo, hi)], lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
        for fut in futures:
            fut.result()

    counts = np.zeros((len(parts), 2), dtype=np.int64)  # per chunk: above, equal
    run(lambda i: kern.tally(parts[i][1][1].view(np.int32), threshold, counts[i]))
    above, equal = counts[:, 0], counts[:, 1]
    allowed = np.clip(ties - (np.cumsum(equal) - equal), 0, equal)  # the earliest ties win
    ends = np.cumsum(above + allowed)
    spans = np.stack([ends - above - allowed, ends], axis=1)

    def pick(i: int) -> None:
        (_, start, _), (idx, val) = parts[i]
        end = kern.pick(idx, val.view(np.int32), threshold, np.array([allowed[i]], dtype=np.int64), np.int64(start),
                        picked[:spans[i, 1]], np.int64(spans[i, 0]))  # never past its span: threads share `picked`
        assert end == spans[i, 1], (end, spans[i])

    run(pick)
    return spans
