"""Optional compiled kernels (numba) for an exact global top-k over float32 / bfloat16 checkpoint pairs.

With the `fast` extra (`pip install "safe-cpift[fast]"`, numba) a region extraction reads each pair
of float32 (or bfloat16) chunks once and keeps only the entries that can be in the top p, with no full-size
temporaries (`regions.fused_scan` drives the kernels); without it `regions.scoring` and
`regions.select` do the same with torch and numpy. Both give the same region bit for bit: scores are
float32 subtractions (no fast-math) and the cut is IEEE `>=`, so NaN never passes.

Kernels (`Kernels`):
- `cut`: (index, |b − a|) of the entries of a float32 chunk pair with |b − a| >= floor; the same for
  bfloat16 pairs given as int16 bit patterns (each widened to float32 exactly as read);
- `histogram`: count non-negative float32 values by the high or low half of their bits (for
  non-negative floats the bit pattern orders like the value), the two passes of a radix select;
  `weighted_histogram` adds a weight per part instead of 1 (`weighted_floor_bits`);
- `tally`: how many values are above a threshold and how many equal it;
- `pick`: the indices of the values above a threshold, plus of the first `ties` equal to it.

A region extraction uses them when they are loaded already (`warm_up`) or when the pair has at
least `MIN_ENTRIES` entries, enough for the faster scan to repay the per-process load.
`SAFE_CPIFT_FUSED=0` turns them off (the torch path is then used even with numba installed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from safe_cpift.lazy_kernels import LazyKernels, widen_intrinsic

# The fused scan is ~0.5 ns per entry pair faster than the torch path on one thread and the kernels
# cost 0.4–0.8 s to load per process (measured on a 2-core machine): they repay it from ~1G pairs.
MIN_ENTRIES = 1 << 30
BLOCK = 64  # entries compared at once into a bit mask, whose set bits are then visited (fastest measured)
HIGH_BITS = 16  # radix select: first pass on bits 30..15 of the float32 pattern, second on bits 14..0


class Kernels(NamedTuple):
    """The compiled kernels (see the module docstring)."""

    cut: Callable[..., int]
    histogram: Callable[..., None]
    weighted_histogram: Callable[..., None]
    tally: Callable[..., None]
    pick: Callable[..., int]


def _build() -> Kernels:
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic

    @intrinsic
    def _trailing_zeros(typingctx, x):  # noqa: ANN001 -- numba intrinsic: LLVM cttz of a nonzero integer
        def codegen(context, builder, signature, args):  # noqa: ANN001
            return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

        return x(x), codegen

    _as_float32 = widen_intrinsic()

    block = BLOCK
    low_bits = 31 - HIGH_BITS
    low_mask = (1 << low_bits) - 1

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def cut(a: np.ndarray, b: np.ndarray, floor: np.float32, idx_out: np.ndarray, val_out: np.ndarray) -> np.int64:
        # writes (index, score) of the candidates to idx_out / val_out (room for len(a)); returns their
        # count. float32 pairs, or bfloat16 pairs given as int16 bit patterns, each widened exactly to
        # float32 as it is read (as the torch path subtracts bfloat16 weights in float32)
        m = 0
        n = a.shape[0]
        whole = n // block
        for k in range(whole):
            lo = k * block
            hits = np.uint64(0)
            for j in range(block):  # branch-free bit mask of the block's candidates (vectorized)
                d = abs(_as_float32(b[lo + j]) - _as_float32(a[lo + j]))
                hits |= np.uint64(d >= floor) << np.uint64(j)
            while hits:  # most blocks hold none or one
                j = _trailing_zeros(hits)
                idx_out[m] = lo + j
                val_out[m] = abs(_as_float32(b[lo + j]) - _as_float32(a[lo + j]))
                m += 1
                hits &= hits - np.uint64(1)
        for i in range(whole * block, n):
            d = abs(_as_float32(b[i]) - _as_float32(a[i]))
            if d >= floor:
                idx_out[m] = i
                val_out[m] = d
                m += 1
        return m

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def histogram(bits: np.ndarray, high: np.int64, counts: np.ndarray) -> None:
        # high < 0: count by the high bits; else count by the low bits the entries whose high bits == high
        if high < 0:
            for x in bits:
                counts[x >> low_bits] += 1
        else:
            for x in bits:
                if (x >> low_bits) == high:
                    counts[x & low_mask] += 1

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def weighted_histogram(bits: np.ndarray, ends: np.ndarray, weights: np.ndarray, high: np.int64,
                           counts: np.ndarray) -> None:
        # `histogram` with float64 weights: entries [ends[p - 1], ends[p]) of `bits` weigh weights[p]
        lo = 0
        for p in range(ends.shape[0]):
            w = weights[p]
            if high < 0:
                for i in range(lo, ends[p]):
                    counts[bits[i] >> low_bits] += w
            else:
                for i in range(lo, ends[p]):
                    if (bits[i] >> low_bits) == high:
                        counts[bits[i] & low_mask] += w
            lo = ends[p]

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def tally(bits: np.ndarray, threshold: np.int32, counts: np.ndarray) -> None:
        # counts[0] += how many bits > threshold, counts[1] += how many == threshold
        above = 0
        equal = 0
        for x in bits:
            above += x > threshold
            equal += x == threshold
        counts[0] += above
        counts[1] += equal

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def pick(idx: np.ndarray, bits: np.ndarray, threshold: np.int32, ties: np.ndarray, add: np.int64,
             out: np.ndarray, m: np.int64) -> np.int64:
        # appends (in input order) add + the indices with bits > threshold, and of the first ties[0]
        # equal to it (ties[0] is decremented in place, so the count carries over to the next call);
        # writes nothing at or past len(out). Branch-free: every entry is written at out[m], and m
        # moves on only for a pick (~1 in 5 candidates is not one: a branch on it mispredicts)
        end = out.shape[0]
        for i in range(bits.shape[0]):
            x = bits[i]
            if m < end:  # always true until the last pick: predicted
                out[m] = add + idx[i]
            if x == threshold:  # rare
                if ties[0] > 0:
                    ties[0] -= 1
                    m += 1
            else:
                m += x > threshold
        return m

    return Kernels(cut, histogram, weighted_histogram, tally, pick)


_LAZY: LazyKernels[Kernels] = LazyKernels(_build, "region scoring uses the torch path", MIN_ENTRIES)
# kernels(load=True): the kernels or None; worth_it(entries): use them for this much work? (`LazyKernels`)
kernels, worth_it = _LAZY.get, _LAZY.worth_it


def warm_up() -> bool:
    """Load (or compile) the kernels now; returns whether the fused path is available."""
    k = kernels()
    if k is None:
        return False
    z = np.zeros(BLOCK + 1, dtype=np.float32)
    idx, val = np.empty(BLOCK + 1, dtype=np.int32), np.empty(BLOCK + 1, dtype=np.float32)
    m = k.cut(z, z, np.float32(0.0), idx, val)
    zb = np.zeros(BLOCK + 1, dtype=np.int16)
    k.cut(zb, zb, np.float32(0.0), idx, val)  # the bfloat16 (int16 bits) specialization
    bits = val[:m].view(np.int32)
    k.histogram(bits, np.int64(-1), np.zeros(1 << HIGH_BITS, dtype=np.int64))
    k.histogram(bits, np.int64(0), np.zeros(1 << (31 - HIGH_BITS), dtype=np.int64))
    ends, weights = np.array([m], dtype=np.int64), np.ones(1)
    k.weighted_histogram(bits, ends, weights, np.int64(-1), np.zeros(1 << HIGH_BITS))
    k.weighted_histogram(bits, ends, weights, np.int64(0), np.zeros(1 << (31 - HIGH_BITS)))
    k.tally(bits, np.int32(0), np.zeros(2, dtype=np.int64))
    for dtype in (np.int32, np.int64):  # per-tensor indices: int32, or int64 for tensors of >= 2^31 entries
        k.pick(idx[:m], bits, np.int32(0), np.ones(1, dtype=np.int64), np.int64(0), np.empty(m, dtype=dtype),
               np.int64(0))
    return True


def kth_largest_bits(parts: list[np.ndarray], k: int) -> tuple[int, int]:
    """(int32 bit pattern of the k-th largest, how many entries are strictly larger) of non-negative,
    non-NaN float32 values given as int32 views `parts` (together at least k >= 1 entries): an exact
    two-pass radix select."""
    kern = kernels()
    assert kern is not None, "kth_largest_bits needs numba; check kernels() first"
    high = np.zeros(1 << HIGH_BITS, dtype=np.int64)
    for p in parts:
        kern.histogram(p, np.int64(-1), high)
    above = np.cumsum(high[::-1])  # above[i]: entries whose high bits are >= len - 1 - i
    i = int(np.searchsorted(above, k))
    top = len(high) - 1 - i
    rank = k - (int(above[i - 1]) if i else 0)  # rank within the bucket `top`, from its largest
    low = np.zeros(1 << (31 - HIGH_BITS), dtype=np.int64)
    for p in parts:
        kern.histogram(p, np.int64(top), low)
    below = np.cumsum(low[::-1])
    j = int(np.searchsorted(below, rank))
    greater = k - rank + (int(below[j - 1]) if j else 0)
    return (top << (31 - HIGH_BITS)) | (len(low) - 1 - j), greater


def weighted_floor_bits(bits: np.ndarray, ends: np.ndarray, weights: np.ndarray, target: float) -> int | None:
    """The int32 bit pattern of the highest value v with (total weight of the values >= v) >= `target`;
    None when all of them weigh less than `target`.

    `bits`: int32 view of non-negative, non-NaN float32 values, in parts: entries [ends[p - 1], ends[p])
    weigh weights[p] (> 0) each. The weighted quantile `regions.select.estimate_floor` takes from a
    sample, by the two histogram passes of `kth_largest_bits` instead of a partition and sort."""
    kern = kernels()
    assert kern is not None, "weighted_floor_bits needs numba; check kernels() first"
    high = np.zeros(1 << HIGH_BITS)
    kern.weighted_histogram(bits, ends, weights, np.int64(-1), high)
    above = np.cumsum(high[::-1])  # above[i]: weight of the values whose high bits are >= len - 1 - i
    i = int(np.searchsorted(above, target))
    if i == above.size:
        return None
    top = high.size - 1 - i
    before = float(above[i - 1]) if i else 0.0  # weight of the values in higher buckets
    low = np.zeros(1 << (31 - HIGH_BITS))
    kern.weighted_histogram(bits, ends, weights, np.int64(top), low)
    j = int(np.searchsorted(before + np.cumsum(low[::-1]), target))
    return (top << (31 - HIGH_BITS)) | (low.size - 1 - min(j, low.size - 1))
