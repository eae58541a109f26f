"""Task datasets: load user data in any supported format into chat `messages`, validate, mix.

Formats (`format=`):
- ``messages``: a `messages` column of ``[{"role": ..., "content": ...}, ...]`` lists.
- ``prompt_completion``: `prompt` and `completion` columns, each a string or a message list.
- ``alpaca``: `instruction`, optional `input`, `output` columns.
- ``auto`` (default): picked from the columns found.

Sources: a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file (read directly with pyarrow, so no
network and no cache directory is touched), a directory written by `Dataset.save_to_disk`, or a
Hugging Face hub dataset id (``datasets.load_dataset(id, subset, split=...)``).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value

from safe_cpift.io import read_jsonl

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "LOCAL_SUFFIXES",
    "MESSAGES_FEATURES",
    "load_task_dataset",
    "load_prompts",
    "safety_count",
    "to_messages_dataset",
    "detect_format",
    "validate_messages",
    "mix_counts",
    "mix_datasets",
    "with_safety_fraction",
]

FORMATS = ("auto", "messages", "prompt_completion", "alpaca")
FORMAT_ALIASES = {"prompt/completion": "prompt_completion", "prompt-completion": "prompt_completion",
                  "chat": "messages"}
REQUIRED_COLUMNS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}
CANONICAL_COLUMNS = ("messages", "prompt", "completion", "instruction", "input", "output")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROLES = ("system", "user", "assistant")
MESSAGES_FEATURES = Features({"messages": [{"role": Value("string"), "content": Value("string")}]})


class _DataError(ValueError):
    """A problem already described with the task and file (not to be wrapped again)."""


def _label(name: str | None, source: Any) -> str:
    return f"task `{name}` ({source})" if name else f"dataset {source}"


def _is_local(source: str) -> bool:
    path = Path(source)
    return path.exists() or path.suffix.lower() in LOCAL_SUFFIXES or source.startswith((".", "/", "~"))


def _read_local(path: Path, label: str) -> Dataset:
    if not path.exists():
        raise FileNotFoundError(f"{label}: file not found: {path}")
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            from datasets import load_from_disk

            ds = load_from_disk(str(path))
            if not isinstance(ds, Dataset):
                raise ValueError(f"{label}: {path} holds a DatasetDict; point at one split's directory")
            return ds
        raise ValueError(f"{label}: {path} is a directory; give a {'/'.join(LOCAL_SUFFIXES)} file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            try:
                rows = read_jsonl(path, label=label)
            except ValueError as err:
                raise _DataError(str(err)) from None
            return _from_rows(rows, label, path)
        if suffix == ".json":
            with path.open(encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict):  # {"data": [...]} or {"col": [...], ...}
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(data) == 1 and lists and all(isinstance(r, dict) for r in lists[0]):
                    data = lists[0]
                elif data and all(isinstance(v, list) for v in data.values()):
                    return Dataset.from_dict(data)
            return _from_rows(data, label, path)
        if suffix == ".csv":
            import pyarrow as pa
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(str(path), convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
            # CSV has no types: keep every cell as text (a column of numbers is still an answer string)
            return Dataset(table.cast(pa.schema([pa.field(n, pa.string()) for n in table.column_names])))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return Dataset(pq.read_table(str(path)))
    except _DataError:
        raise
    except Exception as err:  # pyarrow / json errors (many are ValueErrors): say which file
        raise ValueError(f"{label}: could not read {path}: {err}") from err
    raise ValueError(f"{label}: unsupported file type `{suffix}` for {path}; use one of {', '.join(LOCAL_SUFFIXES)}")


def _from_rows(rows: Any, label: str, path: Path) -> Dataset:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise _DataError(f"{label}: {path} must hold JSON objects (one per line or a list of objects)")
    if not rows:
        return Dataset.from_dict({})
    return Dataset.from_list(rows)


def detect_format(columns: list[str]) -> str | None:
    """The format implied by `columns` (``messages`` > ``prompt_completion`` > ``alpaca``), or `None`."""
    for fmt, required in REQUIRED_COLUMNS.items():
        if all(c in columns for c in required):
            return fmt
    return None


def validate_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Check one conversation and return it as plain ``{"role", "content"}`` dicts.

    A conversation needs at least one `user` turn and must end with an `assistant` turn (the answer
    trained on, or the reference answer of a test example); roles are `system`, `user`, `assistant`.

    Raises:
        `ValueError` naming `where` (task, file and row) and what is wrong.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: `messages` must be a non-empty list of {{role, content}} dicts, got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"{where}: message {i} must be a dict with `role` and `content`, got {m!r:.80}")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"{where}: message {i} has role {role!r}; allowed roles: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: message {i} (`{role}`) content must be a string, got {content!r:.80}")
        if role == "system" and i != 0:
            raise ValueError(f"{where}: a `system` message may only come first (found at position {i})")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in out):
        raise ValueError(f"{where}: the conversation has no `user` message")
    if out[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the conversation must end with an `assistant` message (the answer), "
                         f"it ends with `{out[-1]['role']}`")
    return out


def _as_turns(value: Any, role: str, where: str, column: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return [dict(m) if isinstance(m, Mapping) else m for m in value]
    raise ValueError(f"{where}: `{column}` must be a string or a list of messages, got {value!r:.80}")


def _row_to_messages(row: Mapping[str, Any], fmt: str, where: str) -> list[dict[str, str]]:
    if fmt == "messages":
        msgs = row["messages"]
    elif fmt == "prompt_completion":
        msgs = _as_turns(row["prompt"], "user", where, "prompt") + _as_turns(
            row["completion"], "assistant", where, "completion")
    else:  # alpaca
        instruction, extra, output = row["instruction"], row.get("input"), row["output"]
        for col, val in (("instruction", instruction), ("output", output)):
            if not isinstance(val, str):
                raise ValueError(f"{where}: `{col}` must be a string, got {val!r:.80}")
        if extra is not None and not isinstance(extra, str):
            extra = str(extra)
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return validate_messages(msgs, where)


def to_messages_dataset(
    ds: Dataset,
    *,
    format: str = "auto",
    columns: Mapping[str, str] | None = None,
    name: str | None = None,
    source: Any = "<dataset>",
) -> Dataset:
    """Convert an already loaded dataset to a one-column chat `messages` dataset (validated).

    Args:
        ds (`datasets.Dataset`): rows in one of the supported formats.
        format (`str`, *optional*, defaults to `"auto"`): one of `FORMATS`.
        columns (`Mapping[str, str]`, *optional*): canonical column → the column's name in `ds`,
            e.g. ``{"prompt": "question", "completion": "answer"}`` for GSM8K.
        name (`str`, *optional*): task name, used in error messages.
        source: where the rows came from, used in error messages.

    Returns:
        `datasets.Dataset` with exactly one column, `messages`.
    """
    label = _label(name, source)
    fmt = FORMAT_ALIASES.get(format, format)
    if fmt not in FORMATS:
        raise ValueError(f"{label}: `format` must be one of {', '.join(FORMATS)}, got {format!r}")
    found = list(ds.column_names)
    if len(ds) == 0:
        raise ValueError(f"{label}: no rows (columns found: {', '.join(found) or 'none'})")
    if columns:
        bad = [k for k in columns if k not in CANONICAL_COLUMNS]
        if bad:
            raise ValueError(f"{label}: `columns` keys must be among {', '.join(CANONICAL_COLUMNS)}, got {bad}")
        missing_src = [v for v in columns.values() if v not in found]
        if missing_src:
            raise ValueError(f"{label}: `columns` names {missing_src} which the data does not have; "
                             f"columns found: {', '.join(found) or '(none)'}")
        ds = ds.select_columns(list(columns.values())).rename_columns(
            {v: k for k, v in columns.items() if v != k})
        found = list(ds.column_names)
    if fmt == "auto":
        fmt = detect_format(found)
        if fmt is None:
            expected = "; ".join(f"{f}: {', '.join(c)}" for f, c in REQUIRED_COLUMNS.items())
            raise ValueError(f"{label}: cannot tell the format from the columns found ({', '.join(found) or 'none'}); "
                             f"expected one of [{expected}] — rename them or set `columns` in the recipe")
    missing = [c for c in REQUIRED_COLUMNS[fmt] if c not in found]
    if missing:
        raise ValueError(f"{label}: format `{fmt}` needs columns {', '.join(REQUIRED_COLUMNS[fmt])}; "
                         f"missing {', '.join(missing)}; columns found: {', '.join(found) or '(none)'} "
                         f"— map them with `columns` (e.g. {{prompt: question}})")
    rows = [_row_to_messages(row, fmt, f"{label}, row {i}") for i, row in enumerate(ds)]
    return Dataset.from_dict({"messages": rows}, features=MESSAGES_FEATURES)


def load_task_dataset(
    source: str | Path,
    *,
    format: str = "auto",
    split: str = "train",
    name: str | None = None,
    columns: Mapping[str, str] | None = None,
    subset: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load a task's data from a local file or the hub into a validated chat `messages` dataset.

    Args:
        source (`str` or `Path`): a ``.jsonl``/``.json``/``.csv``/``.parquet`` file, a
            `save_to_disk` directory, or a hub dataset id.
        format (`str`, *optional*, defaults to `"auto"`): ``messages``, ``prompt_completion``,
            ``alpaca`` or ``auto``.
        split (`str`, *optional*, defaults to `"train"`): hub split (a local file is one split).
        name (`str`, *optional*): the task's name, used in error messages.
        columns (`Mapping[str, str]`, *optional*): canonical column → column in the source.
        subset (`str`, *optional*): hub config name (e.g. ``"main"`` for ``openai/gsm8k``).
        limit (`int`, *optional*): keep only the first `limit` rows.

    Returns:
        `datasets.Dataset` with one column, `messages`.

    Raises:
        `ValueError` naming the task and the file: missing columns (found vs expected), no rows,
        malformed messages. `FileNotFoundError` for a missing local file.
    """
    source_str = str(source)
    label = _label(name, source_str)
    if limit is not None and limit < 1:
        raise ValueError(f"{label}: `limit` must be >= 1, got {limit}")
    ds = _read_any(source_str, label, split=split, subset=subset)
    if limit is not None and len(ds) > limit:
        ds = ds.select(range(limit))
    out = to_messages_dataset(ds, format=format, columns=columns, name=name, source=source_str)
    logger.debug("%s: %d rows", label, len(out))
    return out


def _read_any(source: str, label: str, *, split: str, subset: str | None) -> Dataset:
    """Rows of a local file / save_to_disk directory, or of a hub dataset split."""
    if _is_local(source):
        return _read_local(Path(source).expanduser(), label)
    from datasets import load_dataset

    logger.info("loading %s (subset=%s, split=%s) from the hub", source, subset, split)
    try:
        return load_dataset(source, subset, split=split)
    except Exception as err:
        raise ValueError(f"{label}: could not load hub dataset `{source}` (subset={subset!r}, "
                         f"split={split!r}): {err}") from err


def load_prompts(
    source: str | Path,
    *,
    column: str = "prompt",
    split: str = "test",
    subset: str | None = None,
    where: Mapping[str, Any] | None = None,
    limit: int | None = None,
    name: str | None = None,
) -> list[Any]:
    """Prompts to evaluate, e.g. AdvBench's `prompt` or XSTest's safe prompts.

    Args:
        source (`str` or `Path`): a local file or a hub dataset id.
        column (`str`, *optional*, defaults to `"prompt"`): the prompt column; a column of message
            lists (e.g. `messages`) gives each whole conversation up to its final assistant turn
            (a plain string when that is one user turn).
        split, subset: hub split and config.
        where (`Mapping[str, Any]`, *optional*): keep rows whose columns equal these values
            (``{"label": "safe"}``).
        limit (`int`, *optional*): keep the first `limit` prompts (after filtering).
        name (`str`, *optional*): suite name for error messages.
    """
    source_str = str(source)
    label = _label(name, source_str)
    ds = _read_any(source_str, label, split=split, subset=subset)
    found = list(ds.column_names)
    missing = [c for c in [column, *(where or {})] if c not in found]
    if missing:
        raise ValueError(f"{label}: missing column(s) {', '.join(missing)}; columns found: {', '.join(found) or '(none)'}")
    rows = ds.to_list() if len(ds) else []
    if where:
        rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    prompts = []
    for i, row in enumerate(rows):
        value = row[column]
        if isinstance(value, list):  # the whole conversation up to the final assistant turn
            from safe_cpift.evals.conversation import conversation_prompt

            value = conversation_prompt(value)
        if not value or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"{label}, row {i}: `{column}` holds no prompt text ({value!r:.80})")
        prompts.append(value)
    if limit is not None:
        prompts = prompts[:limit]
    if not prompts:
        raise ValueError(f"{label}: no prompts" + (f" match `where` {dict(where)}" if where else ""))
    return prompts


def _rng(seed: int, key: str):
    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def _take(ds: Dataset, indices: list[int]) -> list[list[dict[str, str]]]:
    """The `messages` of rows `indices` as plain lists (drops other columns and feature quirks)."""
    if "messages" not in ds.column_names:
        raise ValueError(f"expected a chat `messages` dataset, got columns {ds.column_names}")
    col = ds["messages"]
    return [[{"role": m["role"], "content": m["content"]} for m in col[i]] for i in indices]


def _shuffled(rows: list, seed: int) -> Dataset:
    order = _rng(seed, "__shuffle__").permutation(len(rows))
    return Dataset.from_dict({"messages": [rows[int(i)] for i in order]}, features=MESSAGES_FEATURES)


def _sample(n_rows: int, k: int, seed: int, key: str) -> list[int]:
    """`k` row indices: without replacement when possible, else whole copies plus a random remainder."""
    rng = _rng(seed, key)
    full, rest = divmod(k, n_rows)
    idx = [int(i) for _ in range(full) for i in rng.permutation(n_rows)]
    idx += [int(i) for i in rng.permutation(n_rows)[:rest]]
    return idx


def mix_counts(sizes: Mapping[str, int], per_source: int | Mapping[str, int]) -> dict[str, int]:
    """How many examples each source contributes (``per_source`` int → the same for every source)."""
    counts = {}
    for key in sizes:
        k = per_source if isinstance(per_source, int) else per_source.get(key)
        if k is None:
            raise ValueError(f"`per_source` has no count for source `{key}` (given for {sorted(per_source)})")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"`per_source` for `{key}` must be an integer >= 0, got {k!r}")
        counts[key] = k
    return counts


def mix_datasets(
    datasets: Mapping[str, Dataset],
    per_source: int | Mapping[str, int],
    seed: int = 0,
    *,
    return_counts: bool = False,
) -> Dataset | tuple[Dataset, dict[str, dict[str, int]]]:
    """A balanced, shuffled mix of several `messages` datasets.

    Each source contributes `per_source` examples: sampled without replacement when it has enough
    rows; when it is short, every row is used ⌊k/n⌋ times plus a random remainder (sampling with
    replacement, stratified). Deterministic for a given `seed`, independent of dict order.

    Args:
        datasets (`Mapping[str, Dataset]`): source name → dataset with a `messages` column.
        per_source (`int` or `Mapping[str, int]`): examples per source.
        seed (`int`, *optional*, defaults to `0`).
        return_counts (`bool`, *optional*): also return ``{source: {"rows", "taken", "repeated"}}``.
    """
    if not datasets:
        raise ValueError("`datasets` is empty: nothing to mix")
    counts = mix_counts({k: len(v) for k, v in datasets.items()}, per_source)
    rows, record = [], {}
    for key in sorted(datasets):
        ds, k = datasets[key], counts[key]
        if k and len(ds) == 0:
            raise ValueError(f"source `{key}` has no rows, cannot take {k}")
        record[key] = {"rows": len(ds), "taken": k, "repeated": max(0, k - len(ds))}
        if len(ds) < k:
            logger.info("source `%s` has %d rows < %d requested: sampling with replacement", key, len(ds), k)
        if k:
            rows += _take(ds, _sample(len(ds), k, seed, key))
    if not rows:
        raise ValueError("every source contributes 0 examples: nothing to mix")
    mixed = _shuffled(rows, seed)
    return (mixed, record) if return_counts else mixed


def safety_count(n_user: int, fraction: float) -> int:
    """Safety examples to add to `n_user` examples so that they make `fraction` of the result."""
    if not 0 <= fraction < 1:
        raise ValueError(f"`mix_fraction` must be in [0, 1), got {fraction}")
    return int(math.floor(fraction * n_user / (1 - fraction) + 0.5))


def with_safety_fraction(user_mix: Dataset, safety: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Add safety examples to `user_mix` so that they make `fraction` of the shuffled result.

    Args:
        user_mix (`Dataset`): the user-task mix (`messages`).
        safety (`Dataset`): safety examples (`messages`); sampled with replacement if too few.
        fraction (`float`): share of safety examples in the result, in ``[0, 1)``; e.g. 0.05.
        seed (`int`, *optional*, defaults to `0`).
    """
    k = safety_count(len(user_mix), fraction)
    rows = _take(user_mix, list(range(len(user_mix))))
    if k:
        if len(safety) == 0:
            raise ValueError("the safety dataset has no rows")
        rows += _take(safety, _sample(len(safety), k, seed, "__safety__"))
    return _shuffled(rows, seed)
