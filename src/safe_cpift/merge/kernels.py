"""Optional compiled kernels (numba) for fusing float32 or bfloat16 tensors: SLERP sums and core transplants.

With the `fast` extra (`pip install "safe-cpift[fast]"`, numba) `merge.slerp` and `merge.fuse` use
these for float32 tensors; without it (or with `SAFE_CPIFT_FUSED=0`) they use torch. The results
agree to float32 rounding:

- `gram2`: the float64 dot products (a·a, a·b, b·b) of two float32 vectors per 64K-entry block
  (vectorised, with fused multiply-adds), for `dots2` to add in block order: the same sums for any
  number of threads, and symmetric (swapping a and b swaps a·a and b·b exactly), so SLERP(0.5)
  stays order-free;
- `weighted_sum2`: `fl(w0·a) + fl(w1·b)` in float32, each product rounded before the add, as torch's
  chunked sum in `merge.slerp` (bit for bit);
- `transplant2`: copy two tasks' sorted core indices from their models into the output, an entry in
  both cores going to the larger |θ_task − θ_base| (float64; NaN loses; ties to the first task);
- `copy_at` and `member`: copy entries at sorted indices; mark which of one sorted index array are
  in another (a merge walk, no binary search);
- `fuse2`: a fused two-task output, a block of `FUSE_BLOCK` entries at a time: the weighted sum, then
  the cores transplanted, then the protected entries copied, so the scattered copies find the block
  still in cache (the same result as the three passes one after another);
- `round_bf16`: float32 to bfloat16 bits as torch rounds (nearest, ties to even).

The passes read float32 arrays, or bfloat16 ones given as int16 bit patterns (widened exactly as they
are read, `lazy_kernels.widen_intrinsic`), and compute in float32 (dot products in float64).

Loaded when already loaded (`warm_up`) or for models of at least `MIN_ENTRIES` entries, where the
faster passes repay the per-process load (0.4–0.8 s here).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from safe_cpift.lazy_kernels import LazyKernels, widen_intrinsic

MIN_ENTRIES = 1 << 27  # ~134M entries (a 0.5 GB float32 model): below this torch is fast enough
BLOCK = 1 << 16  # entries per float64 partial sum of `gram2`
FUSE_BLOCK = 1 << 14  # entries per block of `fuse2` (64 KiB of each float32 input: stays in L2)


class Kernels(NamedTuple):
    """The compiled kernels (see the module docstring)."""

    gram2: Callable[..., None]
    weighted_sum2: Callable[..., None]
    transplant2: Callable[..., None]
    copy_at: Callable[..., None]
    member: Callable[..., None]
    fuse2: Callable[..., None]
    round_bf16: Callable[..., None]


def _build() -> Kernels:
    import numba

    block = BLOCK
    _as_float32 = widen_intrinsic()  # float32 as is; bfloat16 (int16 bits) widened exactly

    @numba.njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc", "contract"})
    def _block_sums(a: np.ndarray, b: np.ndarray, lo: int, hi: int) -> tuple[float, float, float]:
        # over slices with indices from 0: numba then knows no index is negative, and the loop
        # vectorizes (a[i] for i in range(lo, hi) kept a wraparound check per entry: ~8x slower)
        a, b = a[lo:hi], b[lo:hi]
        aa = ab = bb = 0.0
        for i in range(a.shape[0]):
            x, y = np.float64(_as_float32(a[i])), np.float64(_as_float32(b[i]))
            aa += x * x
            ab += x * y
            bb += y * y
        return aa, ab, bb

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def gram2(a: np.ndarray, b: np.ndarray, partials: np.ndarray, first: int, last: int) -> None:
        # partials[k] = (a.a, a.b, b.b) over block k, for blocks first..last-1
        n = a.shape[0]
        for k in range(first, last):
            lo = k * block
            x, y, z = _block_sums(a, b, lo, min(n, lo + block))
            partials[k, 0], partials[k, 1], partials[k, 2] = x, y, z

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def weighted_sum2(a: np.ndarray, b: np.ndarray, w0: np.float32, w1: np.float32, out: np.ndarray) -> None:
        for i in range(a.shape[0]):  # no fast-math: each product is rounded to float32 before the add
            p = w0 * _as_float32(a[i])
            q = w1 * _as_float32(b[i])
            out[i] = p + q

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _transplant_into(out: np.ndarray, off: np.int64, base: np.ndarray, a: np.ndarray, b: np.ndarray,
                         ia: np.ndarray, ib: np.ndarray, counts: np.ndarray) -> None:
        # `transplant2` into out[k - off] for entry k
        i = j = 0
        na, nb = ia.shape[0], ib.shape[0]
        while i < na or j < nb:
            if j == nb or (i < na and ia[i] < ib[j]):
                k = ia[i]
                out[k - off] = _as_float32(a[k])
                counts[0] += 1
                i += 1
            elif i == na or ib[j] < ia[i]:
                k = ib[j]
                out[k - off] = _as_float32(b[k])
                counts[1] += 1
                j += 1
            else:
                k = ia[i]
                da = abs(np.float64(_as_float32(a[k])) - np.float64(_as_float32(base[k])))
                db = abs(np.float64(_as_float32(b[k])) - np.float64(_as_float32(base[k])))
                if db > da or (da != da and db == db):  # larger |delta| wins; NaN loses; ties: a
                    out[k - off] = _as_float32(b[k])
                    counts[1] += 1
                else:
                    out[k - off] = _as_float32(a[k])
                    counts[0] += 1
                counts[2] += 1
                i += 1
                j += 1

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def transplant2(out: np.ndarray, base: np.ndarray, a: np.ndarray, b: np.ndarray, ia: np.ndarray,
                    ib: np.ndarray, counts: np.ndarray) -> None:
        # counts[0:3] += (entries won by a, entries won by b, entries in both cores)
        _transplant_into(out, 0, base, a, b, ia, ib, counts)

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def _copy_into(out: np.ndarray, off: np.int64, src: np.ndarray, idx: np.ndarray) -> None:
        for i in range(idx.shape[0]):
            out[idx[i] - off] = _as_float32(src[idx[i]])

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def copy_at(out: np.ndarray, src: np.ndarray, idx: np.ndarray) -> None:
        _copy_into(out, 0, src, idx)

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def member(keys: np.ndarray, pool: np.ndarray, mask: np.ndarray) -> None:
        # mask[i] |= keys[i] in pool, both ascending
        i = j = 0
        while i < keys.shape[0] and j < pool.shape[0]:
            if keys[i] < pool[j]:
                i += 1
            elif pool[j] < keys[i]:
                j += 1
            else:
                mask[i] = True
                i += 1
                j += 1

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def fuse2(out: np.ndarray, off: np.int64, g0: np.ndarray, g1: np.ndarray, w0: np.float32, w1: np.float32,
              base: np.ndarray, t0: np.ndarray, t1: np.ndarray, ia: np.ndarray, ib: np.ndarray, src: np.ndarray,
              ip: np.ndarray, lo: np.int64, hi: np.int64, sub: np.int64, counts: np.ndarray) -> None:
        # entries lo..hi-1, entry k into out[k - off]: fl(w0·g0) + fl(w1·g1); then the cores ia of t0 and
        # ib of t1 (`transplant2`), then src at ip (`copy_at`); ia, ib, ip sorted and inside [lo, hi);
        # `sub` entries at a time. counts[0:3] as `transplant2`'s; counts[3] += entries of ip in ia or ib
        i = j = q = 0
        for s in range(lo, hi, sub):
            e = min(hi, s + sub)
            weighted_sum2(g0[s:e], g1[s:e], w0, w1, out[s - off:e - off])
            i1, j1, q1 = i, j, q
            while i1 < ia.shape[0] and ia[i1] < e:
                i1 += 1
            while j1 < ib.shape[0] and ib[j1] < e:
                j1 += 1
            while q1 < ip.shape[0] and ip[q1] < e:
                q1 += 1
            _transplant_into(out, off, base, t0, t1, ia[i:i1], ib[j:j1], counts)
            _copy_into(out, off, src, ip[q:q1])
            x, y = i, j  # protected entries that are also core entries (a merge walk)
            for r in range(q, q1):
                k = ip[r]
                while x < i1 and ia[x] < k:
                    x += 1
                while y < j1 and ib[y] < k:
                    y += 1
                if (x < i1 and ia[x] == k) or (y < j1 and ib[y] == k):
                    counts[3] += 1
            i, j, q = i1, j1, q1

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def round_bf16(bits: np.ndarray, out: np.ndarray) -> None:
        # float32 (as uint32 bits) -> bfloat16 bits, torch's rounding (c10 round_to_nearest_even):
        # nearest, ties to even; NaN -> 0x7FC0
        for i in range(bits.shape[0]):
            x = bits[i]
            if (x & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
                out[i] = np.uint16(0x7FC0)
            else:
                out[i] = np.uint16((x + ((x >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)) >> np.uint32(16))

    return Kernels(gram2, weighted_sum2, transplant2, copy_at, member, fuse2, round_bf16)


_LAZY: LazyKernels[Kernels] = LazyKernels(_build, "fusion uses torch", MIN_ENTRIES)
# kernels(load=True): the kernels or None; worth_it(entries): use them for this much work? (`LazyKernels`)
kernels, worth_it = _LAZY.get, _LAZY.worth_it


def warm_up() -> bool:
    """Load (or compile) the kernels now; returns whether they are available."""
    k = kernels()
    if k is None:
        return False
    x = np.ones(3, dtype=np.float32)
    k.gram2(x, x, np.zeros((1, 3)), 0, 1)
    k.weighted_sum2(x, x, np.float32(0.5), np.float32(0.5), np.empty(3, dtype=np.float32))
    for dtype in (np.int32, np.int64):
        i = np.arange(2, dtype=dtype)
        k.transplant2(x.copy(), x, x, x, i, i, np.zeros(3, dtype=np.int64))
        k.copy_at(x.copy(), x, i)
        k.member(i, i, np.zeros(2, dtype=np.bool_))
    h = np.ones(3, dtype=np.int16)  # bfloat16 inputs as int16 bits (`merge.streamed`)
    k.gram2(h, h, np.zeros((1, 3)), 0, 1)
    for data in (x, h):  # `fuse._fuse_pair` passes int64 indices, `merge.streamed` the regions' stored int32
        for i in (np.arange(2, dtype=np.int32), np.arange(2, dtype=np.int64)):
            k.fuse2(x.copy(), np.int64(0), data, data, np.float32(0.5), np.float32(0.5), data, data, data, i, i,
                    data, i, np.int64(0), np.int64(3), np.int64(FUSE_BLOCK), np.zeros(4, dtype=np.int64))
    k.round_bf16(x.view(np.uint32), np.empty(3, dtype=np.uint16))
    return True


def as_kernel_array(t: object) -> np.ndarray | None:
    """A flat numpy view of a contiguous CPU tensor the kernels take: float32 as is, bfloat16 as its
    int16 bit patterns; else None."""
    import torch

    if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 and t.device.type == "cpu" and t.is_contiguous():
        return t.detach().reshape(-1).view(torch.int16).numpy()
    return as_float32(t)


def as_float32(t: object) -> np.ndarray | None:
    """A flat numpy view of a contiguous float32 CPU tensor, else None."""
    import torch

    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        return None
    return t.detach().reshape(-1).numpy()


_THREADS = 1
_POOL: ThreadPoolExecutor | None = None
MIN_SPLIT = 1 << 20  # entries below which a pass runs on the calling thread alone


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Within the block, run the passes of these kernels on `n` threads (None: torch's thread count).
    The results are the same for any `n`: sums are kept per block and added in block order."""
    global _THREADS
    import torch

    n = torch.get_num_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {n}")
    before, _THREADS = _THREADS, n
    try:
        yield n
    finally:
        _THREADS = before


def _parallel(fn: Callable[[int, int], object], stop: int, entries: int) -> list:
    """[fn(lo, hi) ...] over up to `_THREADS` contiguous parts of range(0, stop), in order; on the calling
    thread alone for one thread or fewer than 2 x `MIN_SPLIT` entries (a pass over `entries`)."""
    global _POOL
    parts = max(1, min(_THREADS, entries // MIN_SPLIT, stop))
    if parts == 1:
        return [fn(0, stop)]
    cuts = [stop * i // parts for i in range(parts + 1)]
    if _POOL is None or _POOL._max_workers < parts:  # noqa: SLF001 -- grow the shared pool when asked
        _POOL = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="safe-cpift-fuse")
    futures = [_POOL.submit(fn, lo, hi) for lo, hi in zip(cuts, cuts[1:], strict=False)]
    return [f.result() for f in futures]


def dots2(kern: Kernels, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(a·a, a·b, b·b) in float64 of two float32 vectors: `gram2` per block (on `_THREADS` threads),
    blocks added in order."""
    blocks = -(-a.shape[0] // BLOCK)
    partials = np.zeros((max(blocks, 1), 3))
    _parallel(lambda lo, hi: kern.gram2(a, b, partials, lo, hi), blocks, a.shape[0])
    return sum_partials(partials)


def sum_partials(partials: np.ndarray) -> tuple[float, float, float]:
    """(a·a, a·b, b·b): `gram2`'s per-block partial sums added in block order."""
    aa = ab = bb = 0.0
    for x, y, z in partials.tolist():
        aa, ab, bb = aa + x, ab + y, bb + z
    return aa, ab, bb


def weighted_sum(kern: Kernels, a: np.ndarray, b: np.ndarray, w0: float, w1: float, out: np.ndarray) -> None:
    """out = fl(w0·a) + fl(w1·b) in float32, on `_THREADS` threads."""
    f0, f1 = np.float32(w0), np.float32(w1)
    _parallel(lambda lo, hi: kern.weighted_sum2(a[lo:hi], b[lo:hi], f0, f1, out[lo:hi]), a.shape[0], a.shape[0])


def transplant(kern: Kernels, out: np.ndarray, base: np.ndarray, a: np.ndarray, b: np.ndarray, ia: np.ndarray,
               ib: np.ndarray) -> np.ndarray:
    """`transplant2` on `_THREADS` threads (each on a range of positions); returns the counts (won by
    a, won by b, contested)."""

    def part(lo: int, hi: int) -> np.ndarray:
        counts = np.zeros(3, dtype=np.int64)
        sa, sb = np.searchsorted(ia, [lo, hi]), np.searchsorted(ib, [lo, hi])
        kern.transplant2(out, base, a, b, ia[sa[0]:sa[1]], ib[sb[0]:sb[1]], counts)
        return counts

    return np.sum(_parallel(part, out.shape[0], 64 * (ia.size + ib.size)), axis=0)


def fuse_pair(kern: Kernels, out: np.ndarray, g0: np.ndarray, g1: np.ndarray, w0: float, w1: float,
              base: np.ndarray, t0: np.ndarray, t1: np.ndarray, ia: np.ndarray, ib: np.ndarray, src: np.ndarray,
              ip: np.ndarray) -> np.ndarray:
    """`fuse2` on `_THREADS` threads (each on a range of positions): out = fl(w0·g0) + fl(w1·g1), the
    cores `ia` of `t0` and `ib` of `t1` transplanted (`transplant2`), then `src` copied at `ip`; the
    indices sorted int64. Returns the counts (won by t0, won by t1, contested, protected entries in a core)."""
    f0, f1, sub = np.float32(w0), np.float32(w1), np.int64(FUSE_BLOCK)

    def part(lo: int, hi: int) -> np.ndarray:
        counts = np.zeros(4, dtype=np.int64)
        (a0, a1), (b0, b1), (p0, p1) = (np.searchsorted(x, [lo, hi]) for x in (ia, ib, ip))
        kern.fuse2(out, np.int64(0), g0, g1, f0, f1, base, t0, t1, ia[a0:a1], ib[b0:b1], src, ip[p0:p1], np.int64(lo),
                   np.int64(hi), sub, counts)
        return counts

    return np.sum(_parallel(part, out.shape[0], out.shape[0]), axis=0)
