"""Compiled kernels (numba, the `fast` extra) built on first use, for `regions.fused` and `merge.kernels`.

Importing numba and loading cached kernels costs 0.4–0.8 s once per process (measured on a 2-core
machine), so each user loads them only where they repay it; `SAFE_CPIFT_FUSED=0` turns them all off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K")

SWITCH = "SAFE_CPIFT_FUSED"  # "0": never use the compiled kernels


class LazyKernels(Generic[K]):
    """Kernels from `build()`, built at most once; None without numba or with `SAFE_CPIFT_FUSED=0`.

    Args:
        build: returns the kernels (imports numba; an ImportError means "not installed").
        fallback: what runs instead, for the debug log (e.g. "region scoring uses torch").
        min_entries: the work size (entries) from which loading the kernels repays itself.
    """

    def __init__(self, build: Callable[[], K], fallback: str, min_entries: int) -> None:
        self.build = build
        self.fallback = fallback
        self.min_entries = min_entries
        self.value: K | None = None
        self.tried = False

    def get(self, load: bool = True) -> K | None:
        """The kernels; when not loaded yet, build them if `load`, else None."""
        if os.environ.get(SWITCH, "1") == "0":
            return None
        if not self.tried and load:
            self.tried = True
            try:
                self.value = self.build()
            except ImportError:
                logger.debug("numba is not installed: %s (pip install 'safe-cpift[fast]')", self.fallback)
        return self.value

    def worth_it(self, entries: int) -> bool:
        """Whether to use the kernels for `entries` entries: when they are loaded already, or when
        there are at least `min_entries` (loading them then, as that repays itself)."""
        if self.get(load=False) is not None:
            return True
        return entries >= self.min_entries and self.get() is not None


_WIDEN: list = []


def widen_intrinsic() -> Callable:
    """A numba intrinsic `as_float32(x)` for kernels that take float32 arrays or bfloat16 arrays given as
    int16 bit patterns: a float32 as is, int16 bits widened exactly to float32 (the 16 bits become the
    high half, as torch's bfloat16 -> float32). Built once, on the first kernel build (imports numba)."""
    if not _WIDEN:
        import numba
        from llvmlite import ir
        from numba.extending import intrinsic

        @intrinsic
        def as_float32(typingctx, x):  # noqa: ANN001 -- numba intrinsic
            if x == numba.types.float32:
                return numba.types.float32(x), lambda context, builder, signature, args: args[0]
            if x != numba.types.int16:
                return None

            def codegen(context, builder, signature, args):  # noqa: ANN001 -- exact: the 16 bits become the high half
                wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
                return builder.bitcast(wide, ir.FloatType())

            return numba.types.float32(x), codegen

        _WIDEN.append(as_float32)
    return _WIDEN[0]
