"""Helpers shared by the throughput benchmarks: model shapes, raw reads, page-cache control, peak memory."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def llama_shapes(layers: int, hidden: int = 1024, inter: int = 2816, vocab: int = 32000) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of an untied Llama-like checkpoint (write order)."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[p + f"self_attn.{m}.weight"] = (hidden, hidden)
        out[p + "mlp.gate_proj.weight"] = (inter, hidden)
        out[p + "mlp.up_proj.weight"] = (inter, hidden)
        out[p + "mlp.down_proj.weight"] = (hidden, inter)
        out[p + "input_layernorm.weight"] = (hidden,)
        out[p + "post_attention_layernorm.weight"] = (hidden,)
    out["model.norm.weight"] = (hidden,)
    out["lm_head.weight"] = (vocab, hidden)
    return out


def files(*dirs: Path) -> list[Path]:
    return sorted(p for d in dirs for p in Path(d).glob("*.safetensors"))


def read_files(paths: list[Path], copy_to: Path | None = None) -> int:
    """Read every byte of `paths` (16 MB `readinto`, no parsing); optionally write them to `copy_to`."""
    buf = bytearray(16 * 2**20)
    view = memoryview(buf)
    n = 0
    out = open(copy_to, "wb") if copy_to is not None else None  # noqa: SIM115 - closed below
    try:
        for p in paths:
            with open(p, "rb", buffering=0) as f:
                while (r := f.readinto(view)) > 0:
                    n += r
                    if out is not None:
                        out.write(view[:r])
    finally:
        if out is not None:
            out.close()
    return n


def drop_cache(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (touches no other process's cache)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonPeak:
    """Sample RssAnon every 20 ms (VmHWM also counts memory-mapped file pages, RssAnon does not)."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))
            self._stop.wait(0.02)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, status_kb("RssAnon"))
