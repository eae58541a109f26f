"""Streaming safetensors checkpoints and atomic writes.

Checkpoints are read tensor by tensor (memory-mapped by safetensors) so that a 70B model never has
to sit in memory whole, and everything we write lands under a temporary name first and is renamed
into place only when complete. Only safetensors is ever read: nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from safe_cpift.errors import CheckpointError, MissingInputError, MissingWeightsError, UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DEFAULT_SHARD_BYTES = 2 * 1024**3

Fingerprint = dict[str, tuple[list[int], str]]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `"float32"`."""
    return str(dtype).removeprefix("torch.")


def state_dict_fingerprint(tensors: Mapping[str, torch.Tensor]) -> Fingerprint:
    """Names, shapes and dtypes of a mapping of tensors, the identity a region is checked against."""
    return {name: (list(t.shape), dtype_name(t.dtype)) for name, t in tensors.items()}


# safetensors header dtype codes (`get_slice(name).get_dtype()`); others are read from the tensor
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class CheckpointReader:
    """Lazy reader over one or several safetensors files of a checkpoint.

    Args:
        path (`str` or `os.PathLike`):
            A `save_pretrained` directory (`model.safetensors` or a sharded
            `model.safetensors.index.json`), or a single `.safetensors` file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._files = self._resolve_files(self.path)
        self._handles: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        for file in self._files:
            for name in self._handle(file).keys():
                if name in self._where:
                    raise ValueError(f"tensor `{name}` appears in two shards of {self.path}")
                self._where[name] = file

    @staticmethod
    def _resolve_files(path: Path) -> list[Path]:
        return weight_files(path)

    def _handle(self, file: Path) -> Any:
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
            except SafetensorError as err:
                raise CheckpointError(
                    f"{file} is not a readable safetensors file ({err}); the copy or download is probably "
                    "incomplete: fetch or save it again"
                ) from None
        return self._handles[file]

    def names(self) -> list[str]:
        """Tensor names, shard by shard (sorted within a shard, as safetensors stores them)."""
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def _slice(self, name: str) -> Any:
        if name not in self._where:
            raise KeyError(f"tensor `{name}` not in checkpoint {self.path}")
        return self._handle(self._where[name]).get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        """The tensor's dtype, from the file header (no tensor is made)."""
        code = self._slice(name).get_dtype()
        dtype = _SAFETENSORS_DTYPES.get(code)
        return dtype if dtype is not None else self.get(name).dtype

    def get(self, name: str) -> torch.Tensor:
        """The tensor (a view of the memory-mapped file: cheap until its data is touched)."""
        if name not in self._where:
            raise KeyError(f"tensor `{name}` not in checkpoint {self.path}")
        return self._handle(self._where[name]).get_tensor(name)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield `(name, tensor)` shard by shard."""
        for name in self._where:
            yield name, self.get(name)

    def fingerprint(self) -> Fingerprint:
        return {name: (list(self.shape(name)), dtype_name(self.dtype(name))) for name in self._where}

    def shard_files(self) -> list[Path]:
        return list(self._files)

    # Mapping-like conveniences so a reader can stand in for a state dict.
    def keys(self) -> list[str]:
        return self.names()

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.iter_tensors()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files that hold a checkpoint's weights, checked to be all there.

    Args:
        path (`str` or `os.PathLike`): a `save_pretrained` directory (`model.safetensors`, or shards
            listed by `model.safetensors.index.json`, or bare `*.safetensors` shards) or one
            `.safetensors` file.

    Raises:
        `MissingInputError`: nothing at `path`.
        `MissingWeightsError`: no safetensors weights (the message says how to convert pickle-only
            checkpoints), or a shard the index names is missing (the message names it).
        `CheckpointError`: the index is not valid JSON with a `weight_map`.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise MissingWeightsError(
                f"{path} is not a .safetensors file; safe-cpift reads weights only from safetensors.\n"
                + _convert_hint(path.parent)
            )
        return [path]
    if not path.is_dir():
        raise MissingInputError(f"no checkpoint at {path}: pass a model directory or a .safetensors file")
    index = path / INDEX_FILE
    if index.is_file():
        return _indexed_shards(index)
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return shards
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickled:
        shown = ", ".join(pickled[:3]) + (f" and {len(pickled) - 3} more" if len(pickled) > 3 else "")
        raise MissingWeightsError(
            f"{path} holds only pickle weights ({shown}); safe-cpift never loads pickle files (opening "
            f"one can run code).\n{_convert_hint(path)}"
        )
    raise MissingWeightsError(
        f"no weights in {path}: expected {SINGLE_FILE}, or {INDEX_FILE} with its shards "
        "(save the model with `save_pretrained`)"
    )


def _indexed_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise CheckpointError(
            f"{index} is not a safetensors index (JSON with a `weight_map` of tensor name -> shard file); "
            "save the model again or fetch the index again"
        ) from None
    if not shards or not all(isinstance(s, str) for s in shards):
        raise CheckpointError(f"{index}: `weight_map` must map tensor names to shard file names")
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        shown = ", ".join(f"`{s}`" for s in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingWeightsError(
            f"{index.parent} is incomplete: {INDEX_FILE} names shard {shown}, which is not there "
            f"({len(shards) - len(missing)} of {len(shards)} shards present); copy or download the missing "
            "shard(s) into the directory"
        )
    return [index.parent / s for s in shards]


def _convert_hint(directory: Path) -> str:
    """How to turn a pickle checkpoint in `directory` into safetensors (shown in the error)."""
    out = directory.parent / f"{directory.name or 'model'}-safetensors"
    return (
        "If you trust the file, convert it once with transformers (tokenizer included):\n"
        f"  python -c \"import transformers as t; p, q = {str(directory)!r}, {str(out)!r}; "
        "t.AutoModelForCausalLM.from_pretrained(p).save_pretrained(q); "
        "t.AutoTokenizer.from_pretrained(p).save_pretrained(q)\"\n"
        f"then pass {out} (use your model's own Auto class if it is not a causal LM)."
    )


def open_checkpoint(path: str | os.PathLike) -> CheckpointReader:
    """Open a safetensors checkpoint directory or file for streaming reads."""
    return CheckpointReader(path)


def is_checkpoint(path: Any) -> bool:
    """Whether `path` names a local safetensors checkpoint (dir or file)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = Path(path)
    return (p.is_file() and p.suffix == ".safetensors") or (
        p.is_dir() and ((p / INDEX_FILE).is_file() or any(p.glob("*.safetensors")))
    )


@contextlib.contextmanager
def atomic_directory(final_path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `final_path`; rename it into place on success.

    On an exception the temporary directory is removed and `final_path` is left untouched. When
    `overwrite` is true an existing `final_path` is replaced (moved aside first, then deleted).
    """
    final = Path(final_path)
    _make_parent(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; choose another path or remove it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_parent(path: Path) -> None:
    """Create the folders above `path`; a file standing where a folder must go is a `UserError` naming it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed([path.parent, *path.parent.parents]) if p.exists() and not p.is_dir()),
                       path.parent)
        raise UserError(f"cannot write {path}: {blocker} is a file, not a directory; choose another output path") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory; pass a file path")
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def iter_jsonl(path: str | os.PathLike, *, label: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_number, object)` for each non-blank line of a JSON Lines file.

    Raises:
        `UserError` (a `ValueError`): naming the line number of a line that is not UTF-8, not JSON or
            not a JSON object, prefixed by `label` (e.g. the task name) when given.
    """
    p = Path(path)
    where = f"{label}: " if label else ""
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{where}line {lineno} of {p} is not UTF-8 text ({err.reason} at byte {err.start + 1} "
                                "of the line); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}line {lineno} of {p} is not valid JSON ({err.msg} at column "
                                 f"{err.colno}); fix or remove it") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}line {lineno} of {p} must be a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | os.PathLike, *, label: str | None = None) -> list[dict[str, Any]]:
    """Read a JSON Lines file into a list of objects (blank lines skipped; errors as `iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path, label=label)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


class ShardedWriter:
    """Write tensors into `save_pretrained`-style safetensors shards, one shard in memory at a time.

    Args:
        out_dir (`str` or `os.PathLike`): directory to write into (usually from `atomic_directory`).
        max_shard_bytes (`int`, *optional*, defaults to 2 GiB): start a new shard past this size.
        metadata (`dict`, *optional*): safetensors metadata (defaults to `{"format": "pt"}`).
    """

    def __init__(self, out_dir: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict[str, str] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self.metadata = metadata or {"format": "pt"}
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._total_bytes = 0
        self._closed = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._closed:
            raise RuntimeError("ShardedWriter is closed")
        if name in self._pending or any(name in s for s in self._shards):
            raise ValueError(f"tensor `{name}` written twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().contiguous()
        self._pending_bytes += size
        self._total_bytes += size

    def _shard_name(self, i: int) -> str:
        return f".shard-{i:05d}.safetensors"

    def _flush(self) -> None:
        if not self._pending:
            return
        i = len(self._shards)
        save_file(self._pending, str(self.out_dir / self._shard_name(i)), metadata=self.metadata)
        self._shards.append(list(self._pending))
        self._pending = {}
        self._pending_bytes = 0

    def close(self) -> list[Path]:
        """Flush, name the shards as `save_pretrained` does, write the index when sharded."""
        if self._closed:
            raise RuntimeError("ShardedWriter is closed")
        self._flush()
        self._closed = True
        n = len(self._shards)
        if n == 0:
            raise ValueError("no tensors were written")
        if n == 1:
            final = [self.out_dir / SINGLE_FILE]
            os.replace(self.out_dir / self._shard_name(0), final[0])
            return final
        final = []
        weight_map = {}
        for i, names in enumerate(self._shards):
            target = self.out_dir / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out_dir / self._shard_name(i), target)
            final.append(target)
            weight_map.update({name: target.name for name in names})
        atomic_write_json(self.out_dir / INDEX_FILE,
                          {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map})
        return final

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._closed:
            self.close()
