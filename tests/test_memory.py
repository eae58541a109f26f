"""`memory.without_huge_pages`: large fresh buffers are marked no-huge-page before their first write."""

import sys

import numpy as np
import pytest

from safe_cpift.memory import without_huge_pages


def vm_flags(address: int) -> list[str]:
    """VmFlags of the mapping holding `address` (/proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise hints are Linux-only (a no-op elsewhere)")
def test_large_arrays_are_kept_out_of_huge_pages():
    arr = np.empty(16 << 20, dtype=np.uint8)
    middle = arr.ctypes.data + arr.nbytes // 2
    assert "nh" not in vm_flags(middle)
    assert without_huge_pages(arr) is arr
    assert "nh" in vm_flags(middle)
    arr[:] = 7  # still an ordinary, writable array
    assert int(arr[::4096].sum()) == 7 * (arr.size // 4096)
    small = np.empty(1 << 20, dtype=np.uint8)  # under 4 MB: left alone (numpy asks no huge pages for it)
    assert without_huge_pages(small) is small
