"""Write safetensors shards tensor by tensor when every name, shape and dtype is known up front.

`safe_cpift.io.ShardedWriter` must hold a whole shard in memory (the safetensors header comes
before the data, and `save_file` copies it once more). A fused model has exactly the base model's
names, shapes and dtypes, so the headers can be written first and each tensor (or part of one,
`add_part`) written at its planned place (`pwrite`) the moment it is computed, in any order: peak
memory stays at one tensor, and a caller can compute the largest tensors first, so the last write it
waits for is a small one. The files are standard safetensors (8-byte little-endian header length,
JSON header padded to 8 bytes, contiguous data) and the index follows `save_pretrained`
(`model.safetensors` or `model-0000i-of-0000n.safetensors` + index JSON).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from safe_cpift.io import INDEX_FILE, SINGLE_FILE, atomic_write_json

_DTYPES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


_BITS = {"bfloat16": ("uint16", "int16")}  # numpy has no bfloat16: its parts come as 16-bit patterns


def _nbytes(shape: list[int], dtype: str) -> int:
    return math.prod(shape) * getattr(torch, dtype).itemsize


class PlannedShardWriter:
    """Stream tensors into shards planned from a fingerprint (name -> (shape, dtype str)).

    Args:
        out_dir (`Path`): directory to write into (usually a temporary dir from `atomic_directory`).
        plan (`dict[str, tuple[list[int], str]]`): every tensor that will be written, in file order
            (tensors may be added in any order: each goes to its planned offset).
        max_shard_bytes (`int`): start a new shard when the next tensor would pass this size.
        metadata (`dict[str, str]`, *optional*): safetensors metadata (defaults to `{"format": "pt"}`).
    """

    def __init__(self, out_dir: str | os.PathLike, plan: dict[str, tuple[list[int], str]], max_shard_bytes: int,
                 metadata: dict[str, str] | None = None) -> None:
        if sys.byteorder != "little":  # pragma: no cover
            raise RuntimeError("safetensors files are little-endian; this writer needs a little-endian machine")
        for name, (_, dtype) in plan.items():
            if dtype not in _DTYPES:
                raise ValueError(f"tensor `{name}` has dtype {dtype}, which safetensors cannot store")
        self.out_dir = Path(out_dir)
        self.plan = {n: (list(s), d) for n, (s, d) in plan.items()}
        self.metadata = metadata or {"format": "pt"}
        shards: list[list[str]] = []
        size = 0
        for name, (shape, dtype) in self.plan.items():
            nbytes = _nbytes(shape, dtype)
            if not shards or (size and size + nbytes > max_shard_bytes):
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
        if not shards:
            raise ValueError("no tensors to write")
        n = len(shards)
        self.files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._shard_of = {name: i for i, names in enumerate(shards) for name in names}
        self._headers: list[bytes] = []
        self._offset: dict[str, int] = {}  # name -> byte offset of its data in its shard
        for names in shards:
            header: dict[str, object] = {"__metadata__": self.metadata}
            offset = 0
            for name in names:
                shape, dtype = self.plan[name]
                nbytes = _nbytes(shape, dtype)
                header[name] = {"dtype": _DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
                self._offset[name] = offset
                offset += nbytes
            raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
            raw += b" " * (-len(raw) % 8)
            self._headers.append(struct.pack("<Q", len(raw)) + raw)
        self._fds: dict[int, int] = {}
        self._written: set[str] = set()
        self._parts: dict[str, int] = {}  # name -> entries taken by `add_part` calls so far
        self._done: dict[str, int] = {}  # name -> entries those calls have written
        self._lock = threading.Lock()  # `add_part` may be called from several threads
        self._closed = False
        self.total_bytes = sum(_nbytes(s, d) for s, d in self.plan.values())

    def _fd(self, i: int) -> int:
        """The open shard `i`, created with its header on first use."""
        with self._lock:
            if self._closed:
                raise ValueError("the writer is closed")
            if i not in self._fds:
                fd = os.open(self.out_dir / self.files[i], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
                self._fds[i] = fd
                _pwrite_all(fd, memoryview(self._headers[i]), 0)
            return self._fds[i]

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write `tensor` at its planned place; each planned name once, with its planned shape and dtype."""
        if self._closed:
            raise ValueError(f"cannot write `{name}`: the writer is closed")
        if name not in self.plan:
            raise ValueError(f"tensor `{name}` is not in the plan")
        if name in self._written or name in self._parts:
            raise ValueError(f"tensor `{name}` was written twice")
        shape, dtype = self.plan[name]
        if list(tensor.shape) != shape or str(tensor.dtype).removeprefix("torch.") != dtype:
            raise ValueError(f"tensor `{name}` is {list(tensor.shape)} {tensor.dtype}, planned {shape} {dtype}")
        i = self._shard_of[name]
        fd = self._fd(i)
        data = tensor.detach().contiguous().cpu().reshape(-1)
        if data.numel():
            _pwrite_all(fd, memoryview(data.view(torch.uint8).numpy()), len(self._headers[i]) + self._offset[name])
        self._written.add(name)

    def add_part(self, name: str, first: int, data: np.ndarray) -> None:
        """Write the flat entries `first .. first + len(data) - 1` of tensor `name` at their planned place.

        Safe to call from several threads (each part is one `pwrite`); the tensor counts as written once
        parts covering all its entries were added. Parts must not overlap: more entries than the tensor
        has is an error."""
        if name not in self.plan:
            raise ValueError(f"tensor `{name}` is not in the plan")
        shape, dtype = self.plan[name]
        allowed = _BITS.get(dtype, (dtype,))
        if data.dtype.name not in allowed or data.ndim != 1:
            raise ValueError(f"a part of tensor `{name}` must be a flat {' or '.join(allowed)} array, got "
                             f"{data.ndim}-d {data.dtype}")
        numel = math.prod(shape)
        if first < 0 or first + data.shape[0] > numel:
            raise ValueError(f"entries {first}..{first + data.shape[0] - 1} are outside tensor `{name}` "
                             f"({numel} entries)")
        i = self._shard_of[name]
        fd = self._fd(i)
        with self._lock:
            if name in self._written:
                raise ValueError(f"tensor `{name}` was written twice")
            done = self._parts.get(name, 0) + data.shape[0]
            if done > numel:
                raise ValueError(f"tensor `{name}` was written twice (parts add up to more than its {numel} entries)")
            self._parts[name] = done
        _pwrite_all(fd, memoryview(data.view(np.uint8)), len(self._headers[i]) + self._offset[name] + first * data.itemsize)
        with self._lock:
            self._done[name] = self._done.get(name, 0) + data.shape[0]
            if self._done[name] == numel:
                self._written.add(name)

    def close(self) -> list[Path]:
        """Check every planned tensor was written, close, write the index when sharded."""
        missing = next((n for n in self.plan if n not in self._written), None)
        if missing is not None:
            raise ValueError(f"tensor `{missing}` was planned but never written")
        for i in range(len(self.files)):
            self._fd(i)  # a shard of empty tensors only: its header
        self.abort()
        self._closed = True
        if len(self.files) > 1:
            weight_map = {name: self.files[i] for name, i in self._shard_of.items()}
            atomic_write_json(self.out_dir / INDEX_FILE,
                              {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map})
        return [self.out_dir / f for f in self.files]

    def abort(self) -> None:
        """Close the open shards (what was written stays)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done
