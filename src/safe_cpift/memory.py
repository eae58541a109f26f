"""Memory hints for large scratch arrays (Linux): keep fresh buffers out of transparent huge pages.

numpy asks the kernel for transparent huge pages for every array of 4 MB or more
(`madvise(MADV_HUGEPAGE)`). Where the kernel then compacts memory on demand to find 2 MB blocks
(`/sys/kernel/mm/transparent_hugepage/defrag` = `madvise`, as on the machine this was measured on),
the first touch of a fresh buffer stalls now and then: writing a new 45 MB array in a fresh process took
3.7–96 ms over six processes with huge pages (median ~23 ms) and 16.9–19.5 ms without them. Region
extraction allocates ~36 MB of such buffers per run; without huge pages it took 0.09–0.10 s instead of
0.11–0.12 s (`benchmarks/bench_region_extract.py`, six A/B pairs).
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Callable

import numpy as np

__all__ = ["without_huge_pages"]

_MADV_NOHUGEPAGE = 15  # linux/mman.h


def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


_MADVISE = _madvise()


def without_huge_pages(arr: np.ndarray) -> np.ndarray:
    """`arr`, after asking the kernel not to back it with transparent huge pages (`MADV_NOHUGEPAGE` on the
    whole pages inside it; a no-op off Linux, for arrays under 4 MB and if the call fails). Call it
    before the array is first written: pages already touched keep what they got."""
    if _MADVISE is None or arr.nbytes < 4 << 20:
        return arr
    start = -(-arr.ctypes.data // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = (arr.ctypes.data + arr.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if stop > start:
        _MADVISE(start, stop - start, _MADV_NOHUGEPAGE)
    return arr
