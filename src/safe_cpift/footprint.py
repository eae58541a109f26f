"""What a stage cost the machine: disk written and peak memory (process RSS, and GPU memory when used).

Peak RSS per stage uses Linux's resettable high-water mark: writing `5` to `/proc/self/clear_refs`
resets `VmHWM` in `/proc/self/status`, so the value read at the end of a stage is that stage's own
peak. Where that is not available (other systems, restricted containers) the process-lifetime peak
(`getrusage`) is reported instead, marked `"scope": "process"`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["PeakMemory", "dir_bytes"]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def dir_bytes(path: str | os.PathLike) -> int:
    """Total size in bytes of the regular files under `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.stat(full).st_size
    return total


def _vm_hwm() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """Measure the peak memory of a block: `start()`, then `stop()` returns a dict for the manifest."""

    def __init__(self) -> None:
        self._scope = "process"
        self._cuda = False

    def start(self) -> None:
        try:
            _CLEAR_REFS.write_text("5")
            self._scope = "stage" if _vm_hwm() is not None else "process"
        except OSError:
            self._scope = "process"
        import sys

        torch = sys.modules.get("torch")  # only when torch is already in use: never import it for this
        self._cuda = bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()

    def stop(self) -> dict[str, Any]:
        peak = _vm_hwm() if self._scope == "stage" else None
        if peak is None:
            import resource

            peak, self._scope = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process"
        out: dict[str, Any] = {"peak_rss_bytes": int(peak), "peak_rss_scope": self._scope}
        if self._cuda:
            import torch

            out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
        return out
