"""Optional fused scoring kernel: |θ_tuned − θ_base| and the cut at a floor in one pass (numba).

With the `fast` extra (`pip install "safe-cpift[fast]"`, numba) a region extraction reads each pair
of float32 chunks once and keeps only the entries that can be in the top p, with no full-size
temporaries; without it `regions.scoring` does the same with torch and numpy in three passes. Both
give the same candidates bit for bit: the difference is float32 subtraction (no fast-math) and the
comparison is IEEE `>=`, so NaN never passes.

A region extraction uses the kernel when it is loaded already (`warm_up`) or when the pair has at
least `MIN_ENTRIES` entries, enough for the faster scan to repay the per-process load.
`SAFE_CPIFT_FUSED=0` turns the kernel off (the torch path is then used even with numba installed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

# The scan is ~0.5 ns per entry pair faster than the torch path on one thread and the kernel costs
# 0.4–0.6 s to load per process (measured on a 2-core machine): it repays itself from ~1G entry pairs.
MIN_ENTRIES = 1 << 30
_KERNEL: Callable | None = None
_TRIED = False


def _build() -> Callable:
    import numba

    @numba.njit(cache=True, nogil=True, boundscheck=False)
    def cut(a: np.ndarray, b: np.ndarray, floor: np.float32, idx_out: np.ndarray, val_out: np.ndarray) -> int:
        # idx_out / val_out hold at least len(a) entries; returns how many were written
        n = a.shape[0]
        m = 0
        whole = n // 8
        for k in range(whole):
            lo = k * 8
            hit = False
            for j in range(8):  # branch-free test of 8 entries; most blocks hold no candidate
                hit |= abs(b[lo + j] - a[lo + j]) >= floor
            if hit:
                for j in range(8):
                    d = abs(b[lo + j] - a[lo + j])
                    if d >= floor:
                        idx_out[m] = lo + j
                        val_out[m] = d
                        m += 1
        for i in range(whole * 8, n):
            d = abs(b[i] - a[i])
            if d >= floor:
                idx_out[m] = i
                val_out[m] = d
                m += 1
        return m

    return cut


def kernel(load: bool = True) -> Callable | None:
    """The compiled kernel, or None without numba (or with `SAFE_CPIFT_FUSED=0`, or when it is not
    loaded yet and `load` is False). Compiled once per machine (cached on disk by numba), loaded once
    per process: importing numba and loading the kernel took 0.4–0.6 s here (`warm_up`)."""
    global _KERNEL, _TRIED
    if os.environ.get("SAFE_CPIFT_FUSED", "1") == "0":
        return None
    if not _TRIED and load:
        _TRIED = True
        try:
            _KERNEL = _build()
        except ImportError:
            logger.debug("numba is not installed: region scoring uses the torch path (pip install 'safe-cpift[fast]')")
    return _KERNEL


def worth_it(entries: int) -> bool:
    """Whether to score `entries` parameter pairs with the kernel: when it is loaded already, or when
    the pair is big enough (>= `MIN_ENTRIES`) for the faster scan to repay loading it."""
    if kernel(load=False) is not None:
        return True
    return entries >= MIN_ENTRIES and kernel() is not None


def warm_up() -> bool:
    """Load (or compile) the kernel now; returns whether the fused path is available."""
    k = kernel()
    if k is None:
        return False
    z = np.zeros(9, dtype=np.float32)
    k(z, z, np.float32(1.0), np.empty(9, dtype=np.int32), np.empty(9, dtype=np.float32))
    return True


def cut_at(a: np.ndarray, b: np.ndarray, floor: float, strict: bool, idx_buf: np.ndarray,
           val_buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, |b − a|) of the entries with |b − a| >= `floor` (> when `strict`), ascending, for two
    contiguous float32 arrays of one length; `idx_buf` (int32) and `val_buf` (float32) hold at least
    `len(a)` entries and back the returned views (valid until the buffers are reused)."""
    f = np.float32(floor)
    if strict:
        f = np.nextafter(f, np.float32(np.inf))  # for float32 d: d > x  <=>  d >= next float after x
    k = kernel()
    assert k is not None, "cut_at needs numba; check kernel() first"
    m = k(a, b, f, idx_buf, val_buf)
    return idx_buf[:m], val_buf[:m]
