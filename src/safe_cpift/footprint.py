"""What a stage cost the machine: disk written, peak memory (process RSS, and GPU memory when used), and
the most models alive at once.

Peak RSS per stage uses Linux's resettable high-water mark: writing `5` to `/proc/self/clear_refs`
resets `VmHWM` in `/proc/self/status`, so the value read at the end of a stage is that stage's own
peak. Where that is not available (other systems, restricted containers) the process-lifetime peak
(`getrusage`) is reported instead, marked `"scope": "process"`.

`ModelCensus` counts the transformers models (`PreTrainedModel`s holding parameters, a model nested
in another counted once) alive at once: torch's global module hooks show it each model as it is
built and each copy as it first runs, and a model counts until it is actually freed, as its memory
does. Weights held outside a model (a state dict, a protection's own tensors) are not counted.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import weakref
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ModelCensus", "PeakMemory", "dir_bytes", "live_models"]

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


_SEEN: weakref.WeakSet = weakref.WeakSet()  # the models any census has seen (weakly: a freed model leaves)
_MODEL_CLASS: list[type] = []


def _is_model(obj: Any) -> bool:
    """Whether `obj` is a transformers `PreTrainedModel` (transformers is never imported for this)."""
    if not _MODEL_CLASS:
        module = sys.modules.get("transformers.modeling_utils")
        if module is None:
            return False
        _MODEL_CLASS.append(module.PreTrainedModel)
    return issubclass(type(obj), _MODEL_CLASS[0])


def _top_level(models: list[Any]) -> list[Any]:
    """`models` with parameters, less those nested in another (a `LlamaModel` inside its `LlamaForCausalLM`)."""
    held = [m for m in models if next(m.parameters(), None) is not None]
    inner = {id(sub) for m in held for sub in m.modules() if sub is not m}
    return [m for m in held if id(m) not in inner]


def live_models() -> list[Any]:
    """Every transformers model alive now (a garbage-collector scan; slow, for checks and tests)."""
    return _top_level([o for o in gc.get_objects() if _is_model(o)])


class ModelCensus:
    """The most transformers models alive at once during a block: `start()`, then `stop()` returns
    `{"peak_models": n}` for the manifest.

    While it runs, torch's global hooks show it every model as it is built (each layer attached to
    it) and every model it has not seen when that model first runs forward (a `copy.deepcopy`
    attaches no layers); it counts, at each of these moments, the models seen so far that are still
    alive. A model built before any census and not run during this one is not counted.
    """

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self.peak = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, len(_top_level(list(_SEEN))))

    def _on_registration(self, module: Any, name: str, sub: Any) -> None:
        if _is_model(module):
            _SEEN.add(module)
            self._sample()

    def _on_forward(self, module: Any, args: Any) -> None:
        if module not in _SEEN and _is_model(module):
            _SEEN.add(module)
            self._sample()

    def start(self) -> None:
        torch = sys.modules.get("torch")  # as PeakMemory: only when torch is already in use
        self.peak = 0
        if torch is None:
            return
        hooks = torch.nn.modules.module
        self._handles = [hooks.register_module_module_registration_hook(self._on_registration),
                         hooks.register_module_forward_pre_hook(self._on_forward)]
        self._sample()

    def stop(self) -> dict[str, Any]:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return {"peak_models": self.peak}
