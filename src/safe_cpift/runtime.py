"""Process-wide runtime settings: the device, CPU threads, denormals, offline mode.

Only the CLI (and test setup) calls `configure_runtime`; library functions leave process-wide state
alone, or change it for the length of a call and restore it (`scoped_threads`, `seeded`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

logger = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
THREADS_VARIABLE = "SAFE_CPIFT_NUM_THREADS"
DEVICE_VARIABLE = "SAFE_CPIFT_DEVICE"
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | None = None) -> str:
    """The device the pipeline trains and evaluates on: `"cpu"`, `"cuda"` or `"cuda:N"`.

    Args:
        device (`str`, *optional*): `"auto"` (a GPU when one is present, else the CPU), `"cpu"`,
            `"cuda"` or `"cuda:N"`. Defaults to `$SAFE_CPIFT_DEVICE` (set by `--device`), else `"auto"`.

    Raises:
        `ValueError`: an unknown device, or `cuda` asked for where torch sees no GPU.
    """
    import torch

    value = (device or os.environ.get(DEVICE_VARIABLE) or "auto").strip().lower()
    if value not in DEVICES and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise ValueError(f"`device` must be one of {', '.join(DEVICES)} or cuda:N, got {value!r}")
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device` is {value!r} but torch sees no GPU here; use `--device cpu` (or `auto`)")
    return value


def set_offline() -> None:
    """Tell every Hugging Face library not to reach the hub (call before importing them).

    Used by the demo and the tests; recipes that name hub ids leave the network alone.
    """
    for var in OFFLINE_VARIABLES:
        os.environ.setdefault(var, "1")


def configure_runtime(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count and flush denormals to zero.

    Args:
        num_threads (`int`, *optional*):
            Threads for torch's CPU kernels. Defaults to `$SAFE_CPIFT_NUM_THREADS`, else 1: on a
            2-core machine one thread gave steady step times while two were erratic whenever another
            process ran (see benchmarks/threads.py to measure on your machine).

    Returns:
        `int`: the thread count in force.
    """
    import torch

    if num_threads is None:
        num_threads = int(os.environ.get(THREADS_VARIABLE, "1"))
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    torch.set_flush_denormal(True)
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    logger.debug("torch threads=%d, flush_denormal on", num_threads)
    return num_threads


@contextlib.contextmanager
def scoped_threads(num_threads: int | None) -> Iterator[None]:
    """Use `num_threads` torch threads inside the block and restore the caller's count after (`None`: no change)."""
    import torch

    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise ValueError(f"`num_threads` must be >= 1, got {num_threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator inside the block; the caller's global RNG state is restored after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
