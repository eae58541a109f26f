"""Scoring parameter entries, streaming tensor by tensor (selection is in `regions.select`).

- *sources*: a model, a state dict or a safetensors checkpoint seen as an ordered list of floating
  tensors (`TensorSource`). Checkpoints are read lazily, one tensor (and one chunk) at a time.
- *scores*: `UpdateScores` (|θ_tuned − θ_base|), `PrecomputedScores`, and `importance_scores`
  (SNIP |θ ⊙ ∇L| summed over batches).

Tensor order is the natural sort of the names (`layers.2` before `layers.10`), so the same pair of
models yields the same region whether it comes as modules, state dicts or sharded checkpoints.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import mmap
import os
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from safe_cpift.io import CheckpointReader, open_checkpoint
from safe_cpift.regions.select import CHUNK

PREFETCH = 1 << 24  # entries per model requested ahead of the scan (64 MiB of float32)
# dtypes read raw by the fused scan, and the torch dtype their entries are viewed as
RAW_DTYPES = {torch.float32: torch.float32, torch.bfloat16: torch.int16}
RAW_NUMPY = {torch.float32: np.float32, torch.bfloat16: np.int16}

logger = logging.getLogger(__name__)

EXCLUDED_SUFFIXES = (".inv_freq", "rotary_emb.inv_freq", ".original_inv_freq")


def natural_key(name: str) -> tuple:
    """Sort key that orders `layers.2` before `layers.10`."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))


def counts_as_weight(name: str, dtype: torch.dtype) -> bool:
    """Whether a tensor can hold core entries: floating point and not a rotary-frequency buffer."""
    return dtype.is_floating_point and not name.endswith(EXCLUDED_SUFFIXES)


class TensorSource:
    """An ordered, lazily read set of floating tensors: a model, a state dict or a checkpoint.

    Args:
        x (`torch.nn.Module`, `Mapping[str, Tensor]`, `CheckpointReader`, `str` or `os.PathLike`):
            Modules contribute their named parameters (tied weights once, buffers never). State
            dicts and checkpoints contribute every floating tensor except rotary `inv_freq` buffers;
            tied tensors of a state dict (one storage under several names) count once, under the
            first name.
    """

    def __init__(self, x: Any) -> None:
        self.label = str(x) if isinstance(x, (str, os.PathLike)) else type(x).__name__
        self._ranges: dict[str, tuple[str, int, int]] = {}
        self._fds: dict[str, int] = {}
        self._maps: dict[str, mmap.mmap] = {}
        self._asked: dict[str, int] = {}  # per file: byte up to which read-ahead was asked (raw_reader)
        self._nowait = getattr(os, "RWF_NOWAIT", 0) if hasattr(os, "preadv") else 0
        if isinstance(x, torch.nn.Module):
            params = {n: p.detach() for n, p in x.named_parameters()}
            self._get: Callable[[str], torch.Tensor] = params.__getitem__
            meta = {n: (tuple(p.shape), p.dtype) for n, p in params.items()}
        elif isinstance(x, CheckpointReader) or isinstance(x, (str, os.PathLike)):
            reader = x if isinstance(x, CheckpointReader) else open_checkpoint(x)
            self._get = reader.get
            meta = {n: (reader.shape(n), reader.dtype(n)) for n in reader.names()}
            self._ranges = _byte_ranges(reader.shard_files())
        elif isinstance(x, Mapping):
            from safe_cpift.models import drop_tied_aliases

            for name, value in x.items():
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"state dict entry `{name}` is a {type(value).__name__}, not a tensor")
            x = drop_tied_aliases(x)  # tied embeddings: one tensor, counted once
            self._get = lambda n, _x=x: _x[n].detach()
            meta = {n: (tuple(t.shape), t.dtype) for n, t in x.items()}
        else:
            raise TypeError(
                f"expected a model, a state dict or a checkpoint directory, got {type(x).__name__}"
            )
        names = sorted((n for n, (_, dt) in meta.items() if counts_as_weight(n, dt)), key=natural_key)
        if not names:
            raise ValueError(f"{self.label} holds no floating-point tensors")
        self.names: list[str] = names
        self.shapes: dict[str, tuple[int, ...]] = {n: tuple(meta[n][0]) for n in names}
        self.dtypes: dict[str, torch.dtype] = {n: meta[n][1] for n in names}

    def get(self, name: str) -> torch.Tensor:
        return self._get(name)

    def willneed(self, name: str, start: int, stop: int) -> None:
        """Ask the kernel to read entries [start, stop) of a checkpoint tensor ahead (no-op in memory)."""
        where = self._ranges.get(name)
        if where is None or not hasattr(os, "posix_fadvise"):
            return
        path, begin, end = where
        size = self.dtypes[name].itemsize
        lo, hi = begin + start * size, min(end, begin + stop * size)
        if hi > lo:
            os.posix_fadvise(self._fd(path), lo, hi - lo, os.POSIX_FADV_WILLNEED)

    def _fd(self, path: str) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def raw_reader(self, name: str, read_ahead: bool = True) -> Callable[[int, int, np.ndarray], np.ndarray] | None:
        """A thread-safe `(start, stop, buf) -> entries [start, stop)` of a float32 or bfloat16 tensor
        as a numpy array (float32, or the int16 bit patterns of bfloat16; `buf` of that dtype):
        `pread` from the checkpoint file into `buf` (a copy from the page cache), or a view of an
        in-memory tensor. None for another dtype.

        With `read_ahead`, a read first asks for pages already in the page cache only (`RWF_NOWAIT`);
        when some are missing it asks the kernel to read the next `PREFETCH` entries of the file ahead
        (`POSIX_FADV_WILLNEED`) and waits for its own. A warm file costs no hint at all. Without it
        (scattered sample reads) a read asks for its own bytes only."""
        where = self._file_range(name)
        if where is None:
            return self._memory_reader(name)
        path, begin = where
        fd, size = self._fd(path), self.dtypes[name].itemsize

        def read(start: int, stop: int, buf: np.ndarray) -> np.ndarray:
            out = buf[: stop - start]
            view, pos = memoryview(out).cast("B"), begin + size * start
            while view.nbytes:
                if read_ahead and self._nowait:
                    try:
                        got = os.preadv(fd, [view], pos, self._nowait)
                    except BlockingIOError:  # pages not cached: read ahead, then wait for these
                        self._hint(path, fd, pos)
                        got = os.preadv(fd, [view], pos)
                    except OSError as e:
                        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                        self._nowait = 0  # a file system without RWF_NOWAIT: plain reads
                        continue
                else:
                    got = os.preadv(fd, [view], pos)
                if got <= 0:
                    raise OSError(f"{path} ended at byte {pos} inside tensor `{name}`")
                view, pos = view[got:], pos + got
            return out

        return read

    def mapped_reader(self, name: str) -> Callable[[int, int, np.ndarray], np.ndarray] | None:
        """Like `raw_reader`, but entries of a checkpoint tensor are a view of the file mapped into
        memory (copy-on-write, never written): no copy at all, and the kernel reads missing pages
        ahead by itself. `buf` is unused. None for a dtype other than float32 or bfloat16.

        The fused scan reads this way. Pages the kernel keeps in large folios (a file written in
        large writes, or read in through a mapping) map ~2x faster than `pread` copies them; pages
        cached as 4 KiB ones (read in by `pread` and `POSIX_FADV_WILLNEED`) map ~1.3x slower."""
        where = self._file_range(name)
        if where is None:
            return self._memory_reader(name)
        path, begin = where
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # writable views: one numba signature
        arr = np.frombuffer(self._maps[path], dtype=RAW_NUMPY[self.dtypes[name]], count=self.numel(name), offset=begin)
        return lambda start, stop, buf: arr[start:stop]

    def _file_range(self, name: str) -> tuple[str, int] | None:
        """(file, first byte) of a float32 or bfloat16 checkpoint tensor stored plainly (little-endian,
        contiguous); None otherwise."""
        where = self._ranges.get(name)
        dtype = self.dtypes[name]
        if where is None or dtype not in RAW_DTYPES or sys.byteorder != "little":
            return None
        if where[2] - where[1] != dtype.itemsize * self.numel(name):
            return None
        return where[0], where[1]

    def _memory_reader(self, name: str) -> Callable[[int, int, np.ndarray], np.ndarray] | None:
        """Views of the tensor as `get` returns it (float32 or bfloat16 bits); None for another dtype."""
        view_as = RAW_DTYPES.get(self.dtypes[name])
        if view_as is None:
            return None
        flat = self.get(name).reshape(-1)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        arr = flat.view(view_as).numpy()
        return lambda start, stop, buf: arr[start:stop]

    def _hint(self, path: str, fd: int, pos: int) -> None:
        """Ask for the `PREFETCH` entries of `path` from byte `pos`, unless most were asked for already."""
        ahead = 4 * PREFETCH
        asked = self._asked.get(path, 0)
        if pos + ahead // 2 <= asked or not hasattr(os, "posix_fadvise"):
            return
        lo = max(pos, asked)
        self._asked[path] = pos + ahead
        os.posix_fadvise(fd, lo, pos + ahead - lo, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._maps = {}  # unmapped once no view of them is left

    def __del__(self) -> None:
        self.close()

    def numel(self, name: str) -> int:
        return math.prod(self.shapes[name])

    def fingerprint(self) -> dict[str, tuple[list[int], str]]:
        return {n: (list(self.shapes[n]), str(self.dtypes[n]).removeprefix("torch.")) for n in self.names}


def _byte_ranges(files: list) -> dict[str, tuple[str, int, int]]:
    """name -> (file, first byte, end byte) from safetensors headers (8-byte length + JSON)."""
    out = {}
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (str(f), 8 + n + info["data_offsets"][0], 8 + n + info["data_offsets"][1])
    return out


def check_same_tensors(a: TensorSource, b: TensorSource, what: tuple[str, str] = ("base", "tuned")) -> None:
    """Raise ValueError naming the first tensor whose name or shape differs between two sources."""
    for name in a.names:
        if name not in b.shapes:
            raise ValueError(f"tensor `{name}` is in `{what[0]}` but not in `{what[1]}`; the two must be the same architecture")
        if a.shapes[name] != b.shapes[name]:
            raise ValueError(
                f"tensor `{name}` has shape {list(a.shapes[name])} in `{what[0]}` but "
                f"{list(b.shapes[name])} in `{what[1]}`; the two must be the same architecture"
            )
    extra = [n for n in b.names if n not in a.shapes]
    if extra:
        raise ValueError(f"tensor `{extra[0]}` is in `{what[1]}` but not in `{what[0]}`; the two must be the same architecture")


class UpdateScores:
    """Scores |θ_tuned − θ_base| (float32), read chunk by chunk from two tensor sources."""

    def __init__(self, base: TensorSource, tuned: TensorSource) -> None:
        check_same_tensors(base, tuned)
        self.base, self.tuned = base, tuned
        self.names = base.names
        self.numels = [base.numel(n) for n in base.names]
        self._cached: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._buf = torch.empty(0)
        self._reads: dict[torch.dtype, tuple[np.ndarray, np.ndarray]] = {}  # `chunk`'s read buffers
        self._raw: tuple | None = None  # (tensor id, read ahead?, dtype, base reader, tuned reader) for `chunk`
        self._local = threading.local()  # per-thread float32 buffers of `_widening_buffers`
        self.prefetch = True
        self._ahead = (0, 0)  # (tensor id, entry) up to which reads were requested

    def _read_ahead(self, tid: int, stop: int) -> None:
        """Keep WILLNEED requests about PREFETCH entries ahead of the sequential position."""
        budget = PREFETCH
        t, pos = max(self._ahead, (tid, stop))
        while budget > 0 and t < len(self.names):
            n = self.numels[t]
            hi = min(n, pos + budget)
            if hi > pos:
                for src in (self.base, self.tuned):
                    src.willneed(self.names[t], pos, hi)
                budget -= hi - pos
            t, pos = (t, hi) if hi < n else (t + 1, 0)
        self._ahead = (t, pos)
    def _pair(self, tid: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached is None or self._cached[0] != tid:
            name = self.names[tid]
            b, t = self.base.get(name).reshape(-1), self.tuned.get(name).reshape(-1)
            if b.device.type != "cpu" or t.device.type != "cpu":
                b, t = b.cpu(), t.cpu()
            self._cached = (tid, b, t)
        return self._cached[1], self._cached[2]

    def chunk(self, tid: int, start: int, stop: int) -> torch.Tensor:
        """Scores of entries [start, stop) of tensor `tid`; valid until the next call. Float32 and
        bfloat16 tensors of a checkpoint are read with `pread` (`TensorSource.raw_reader`, reading
        ahead unless `prefetch` is off, as while `select.sample_scores` reads scattered blocks); either way the score is the float32 |θ_tuned − θ_base| of `scorer`."""
        if self._buf.numel() < stop - start:
            self._buf = torch.empty(max(stop - start, CHUNK), dtype=torch.float32)
            self._reads = {}
        if self._raw is None or self._raw[:2] != (tid, self.prefetch):
            name, ahead = self.names[tid], self.prefetch
            dtype = self.base.dtypes[name]
            same = self.tuned.dtypes[name] == dtype
            self._raw = (tid, ahead, dtype, self.base.raw_reader(name, ahead) if same else None,
                         self.tuned.raw_reader(name, ahead))
        _, _, dtype, read_b, read_t = self._raw
        if read_b is None or read_t is None:
            return self.scorer(tid, stop)(start, stop, self._buf)
        if dtype not in self._reads:
            view = RAW_DTYPES[dtype]
            self._reads[dtype] = tuple(torch.empty(self._buf.numel(), dtype=view).numpy() for _ in range(2))
        buf_b, buf_t = self._reads[dtype]
        b = torch.from_numpy(read_b(start, stop, buf_b)).view(dtype)
        t = torch.from_numpy(read_t(start, stop, buf_t)).view(dtype)
        return self._difference(b, t, self._buf[: stop - start])

    def scorer(self, tid: int, stop: int) -> Callable[[int, int, torch.Tensor], torch.Tensor]:
        """A function `(start, stop, buf) -> scores` of tensor `tid` that is safe to call from worker
        threads (it writes float32 scores into `buf` when both models are float32). Call this on the
        thread that drives the scan: it reads ahead up to entry `stop` of tensor `tid`."""
        b, t = self._pair(tid)
        if self.prefetch and (tid, stop + PREFETCH // 2) > self._ahead:
            self._read_ahead(tid, stop)

        def score(start: int, stop: int, buf: torch.Tensor) -> torch.Tensor:
            return self._difference(b[start:stop], t[start:stop], buf[: stop - start])

        return score

    def _difference(self, bc: torch.Tensor, tc: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """|tc − bc| as float32 in `out` (float32 inputs; others widened exactly into float32 first,
        float64 ones subtracted in float64): the score of every path. Thread-safe."""
        if bc.dtype == torch.float32 and tc.dtype == torch.float32:
            return torch.sub(tc, bc, out=out).abs_()
        if torch.float64 in (bc.dtype, tc.dtype):
            return (tc.to(torch.float64) - bc.to(torch.float64)).abs_().to(torch.float32)
        wide_b, wide_t = self._widening_buffers(out.numel())  # no fresh temporaries (see below)
        wide_b.copy_(bc), wide_t.copy_(tc)  # exact: every float dtype here widens into float32
        return torch.sub(wide_t, wide_b, out=out).abs_()

    def _widening_buffers(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two float32 buffers of `n` entries, reused per thread. Fresh 1 MB temporaries per chunk,
        interleaved with the small long-lived candidate pieces, fragmented glibc's heap: a 1 GB
        bfloat16 pair took 1.3 GB of anonymous memory on the torch path (175 MB with reuse)."""
        bufs = getattr(self._local, "wide", None)
        if bufs is None or bufs[0].numel() < n:
            bufs = self._local.wide = tuple(torch.empty(max(n, CHUNK), dtype=torch.float32) for _ in range(2))
        return bufs[0][:n], bufs[1][:n]

    def raw_readers(self) -> list[tuple[Callable, Callable, str]] | None:
        """Per tensor, the base's and the tuned model's `TensorSource.mapped_reader` (thread-safe
        `(start, stop, buf) -> entries`, views of the mapped files) and the dtype name they share, for the fused scan
        (`regions.fused_scan`); None unless every tensor is float32 or bfloat16 in both models."""
        readers = []
        for name in self.names:
            dtype = self.base.dtypes[name]
            if self.tuned.dtypes[name] != dtype or dtype not in RAW_DTYPES:
                return None
            read_b, read_t = self.base.mapped_reader(name), self.tuned.mapped_reader(name)
            if read_b is None or read_t is None:
                return None
            readers.append((read_b, read_t, str(dtype).removeprefix("torch.")))
        return readers


class PrecomputedScores:
    """Scores given as a mapping of per-tensor tensors (e.g. importance)."""

    def __init__(self, scores: Mapping[str, torch.Tensor], names: list[str]) -> None:
        self.names = names
        self._flat = [scores[n].detach().reshape(-1).to(torch.float32) for n in names]
        self.numels = [f.numel() for f in self._flat]

    def chunk(self, tid: int, start: int, stop: int) -> torch.Tensor:
        return self._flat[tid][start:stop]

    def scorer(self, tid: int, stop: int) -> Callable[[int, int, torch.Tensor], torch.Tensor]:
        flat = self._flat[tid]
        return lambda start, stop, buf: flat[start:stop]


def _batches_from_rows(rows: Any, tokenizer: Any, batch_size: int, max_length: int) -> Iterator[dict]:
    """Tokenize rows with `messages`, `text` or `prompt`/`completion` into padded LM batches."""
    if tokenizer is None:
        raise ValueError("`tokenizer` is required when `dataset` holds text rows; pass the model's tokenizer")

    def render(row: Mapping) -> str:
        if "messages" in row:
            return tokenizer.apply_chat_template(row["messages"], tokenize=False)
        if "text" in row:
            return row["text"]
        if "prompt" in row and "completion" in row:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list):
                return tokenizer.apply_chat_template(prompt + completion, tokenize=False)
            return f"{prompt}{completion}"
        raise ValueError(f"dataset rows need `messages`, `text` or `prompt`/`completion`; got keys {sorted(row)}")

    batch: list[str] = []
    for row in rows:
        batch.append(render(row))
        if len(batch) == batch_size:
            yield _encode(tokenizer, batch, max_length)
            batch = []
    if batch:
        yield _encode(tokenizer, batch, max_length)


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> dict:
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def importance_scores(
    model: torch.nn.Module,
    dataset: Any,
    *,
    tokenizer: Any = None,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    max_batches: int | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """SNIP importance |θ ⊙ ∇L| of every parameter entry, summed over the batches of `dataset`.

    Args:
        model (`torch.nn.Module`): the model to score (left unchanged; gradients are cleared).
        dataset: a `datasets.Dataset` or list of rows (`messages`, `text` or `prompt`/`completion`,
            tokenized with `tokenizer`), or an iterable of ready batches (dicts of tensors given to
            `model(**batch)`; `labels` default to `input_ids`).
        loss_fn (`Callable`, *optional*): `loss_fn(model, batch) -> scalar`; defaults to `model(**batch).loss`.
    """
    from tqdm.auto import tqdm

    rows_like = hasattr(dataset, "column_names") or (
        isinstance(dataset, (list, tuple)) and dataset and isinstance(dataset[0], Mapping)
        and not isinstance(next(iter(dataset[0].values())), torch.Tensor)
    )
    batches = _batches_from_rows(dataset, tokenizer, batch_size, max_length) if rows_like else iter(dataset)
    params = dict(model.named_parameters())
    was_training = model.training
    grad_flags = {n: p.requires_grad for n, p in params.items()}
    scores = {n: torch.zeros(p.shape, dtype=torch.float32) for n, p in params.items() if p.dtype.is_floating_point}
    device = next(model.parameters()).device
    model.eval()
    seen = 0
    try:
        for n in scores:
            params[n].requires_grad_(True)
        for batch in tqdm(batches, desc="importance", unit="batch", disable=not progress or None):
            if max_batches is not None and seen >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            if loss_fn is not None:
                loss = loss_fn(model, batch)
            else:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                if "labels" not in batch and "input_ids" in batch:
                    labels = batch["input_ids"].clone()
                    if "attention_mask" in batch:
                        labels[batch["attention_mask"] == 0] = -100
                    batch["labels"] = labels
                loss = model(**batch).loss
            loss.backward()
            with torch.no_grad():
                for n, s in scores.items():
                    g = params[n].grad
                    if g is not None:
                        s += (params[n].detach() * g).abs().float().cpu()
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        for n, flag in grad_flags.items():
            params[n].requires_grad_(flag)
        model.train(was_training)
    if seen == 0:
        raise ValueError("`dataset` gave no batches to score")
    logger.info("importance scored over %d batches", seen)
    return scores
