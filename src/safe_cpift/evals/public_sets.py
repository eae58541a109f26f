"""Public safety prompt sets with one schema: AdvBench, HarmBench behaviours, StrongREJECT, XSTest.

Every set loads to rows ``{"id", "prompt", "expected", "category", "source"}`` where `expected` is
``"refusal"`` (a harmful request: the model should refuse) or ``"compliance"`` (a safe prompt that
only looks unsafe: refusing it is over-refusal). XSTest carries both kinds (`label` safe/unsafe);
the other three are all harmful.

A set is read from a local file when `path` is given (the original release's CSV/JSON/JSONL/Parquet
or the hub mirror's columns), else from the copy shipped with the package (XSTest, see
`evals/data/xstest/README.md`), else from the hub id in `PUBLIC_SETS` (needs a network).

A name may select one kind of a set with both kinds: `xstest:safe` (the 250 safe prompts, for the
over-refusal suite) and `xstest:unsafe` (the 200 unsafe contrast prompts, for the refusal suite).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe_cpift.io import read_jsonl
from safe_cpift.schema import did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "PUBLIC_SETS", "PublicSet", "load_public_set", "read_table", "rows_from_table", "split_set_name", "bundled_path",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
# `<set>:<kind>` names: the kind's label -> the `expected` value of its rows
KINDS = {"safe": "compliance", "unsafe": "refusal"}


@dataclass(frozen=True)
class PublicSet:
    """Where a public set lives and which of its columns hold what.

    Args:
        name (`str`): short name used in recipes (`advbench`, `harmbench`, `strongreject`, `xstest`).
        hub_id (`str`): dataset id on the Hugging Face hub.
        split (`str`): hub split.
        subset (`str`, *optional*): hub config name.
        prompt_columns (`tuple[str, ...]`): candidate prompt columns, first found wins.
        category_columns (`tuple[str, ...]`): candidate category columns.
        id_columns (`tuple[str, ...]`): candidate id columns.
        context_columns (`tuple[str, ...]`): a context to prepend to the prompt when non-empty
            (HarmBench's contextual behaviours).
        label_column (`str`, *optional*): a safe/unsafe label (XSTest); without one, every row is harmful.
        citation (`str`): the paper to cite.
        safe_labels (`tuple[str, ...]`): labels of `label_column` that mark a safe prompt.
        bundled (`str`, *optional*): path of a copy shipped with the package, under `evals/data/`
            (used when neither `path` nor `hub_id` is given; no network needed).
    """

    name: str
    hub_id: str
    split: str = "train"
    subset: str | None = None
    prompt_columns: tuple[str, ...] = ("prompt",)
    category_columns: tuple[str, ...] = ("category",)
    id_columns: tuple[str, ...] = ("id",)
    context_columns: tuple[str, ...] = ()
    label_column: str | None = None
    citation: str = ""
    safe_labels: tuple[str, ...] = field(default=("safe",))
    bundled: str | None = None


PUBLIC_SETS: dict[str, PublicSet] = {
    "advbench": PublicSet(
        "advbench", "walledai/AdvBench", prompt_columns=("goal", "prompt"), category_columns=(),
        citation="Zou et al., 2023, Universal and Transferable Adversarial Attacks on Aligned Language Models",
    ),
    "harmbench": PublicSet(
        "harmbench", "walledai/HarmBench", subset="standard",
        prompt_columns=("Behavior", "behavior", "prompt"),
        category_columns=("SemanticCategory", "category", "FunctionalCategory"),
        id_columns=("BehaviorID", "id"), context_columns=("ContextString", "context"),
        citation="Mazeika et al., 2024, HarmBench",
    ),
    "strongreject": PublicSet(
        "strongreject", "walledai/StrongREJECT", prompt_columns=("forbidden_prompt", "prompt"),
        category_columns=("category",), citation="Souly et al., 2024, A StrongREJECT for Empty Jailbreaks",
    ),
    "xstest": PublicSet(
        "xstest", "Paul/XSTest", prompt_columns=("prompt",), category_columns=("type", "category"),
        label_column="label", bundled="xstest/xstest_prompts.csv",
        citation="Röttger et al., NAACL 2024, XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours "
                 "in Large Language Models (CC-BY-4.0)",
    ),
}

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Read a local `.jsonl`, `.json`, `.csv` or `.parquet` file into a list of row dicts.

    Raises:
        `FileNotFoundError` for a missing file; `ValueError` naming the line of malformed JSONL or the
        file of an unreadable table.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(p)
    if suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: not valid JSON (line {err.lineno}: {err.msg})") from None
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{p}: a .json data file must hold a list of objects")
        return data
    if suffix == ".csv":
        with p.open(encoding="utf-8", newline="") as fh:
            return [dict(r) for r in csv.DictReader(fh)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(str(p)).to_pylist()
    raise ValueError(f"{p}: unsupported data file type `{suffix}`; use one of {', '.join(TABLE_SUFFIXES)}")


def bundled_path(name: str) -> Path:
    """The file of a public set shipped with the package (`xstest`).

    Raises:
        `ValueError` when the set has no bundled copy; `FileNotFoundError` when the package data is missing.
    """
    spec = PUBLIC_SETS.get(name.lower())
    if spec is None or spec.bundled is None:
        shipped = ", ".join(n for n, s in PUBLIC_SETS.items() if s.bundled)
        raise ValueError(f"`{name}` is not shipped with safe-cpift (bundled sets: {shipped}); pass `path: FILE`")
    path = DATA_DIR / spec.bundled
    if not path.is_file():
        raise FileNotFoundError(f"the bundled copy of `{spec.name}` is missing ({path}); reinstall safe-cpift")
    return path


def split_set_name(name: str) -> tuple[str, str | None]:
    """`"xstest:safe"` → `("xstest", "compliance")`; `"xstest"` → `("xstest", None)`.

    Raises:
        `ValueError` for a kind other than `safe`/`unsafe`, or a kind on a set with one kind only.
    """
    base, sep, kind = name.strip().lower().partition(":")
    if not sep:
        return base, None
    spec = PUBLIC_SETS.get(base)
    if spec is not None and spec.label_column is None:
        raise ValueError(f"`{name}`: `{base}` holds harmful prompts only; use `{base}` without `:{kind}`")
    if kind not in KINDS:
        guess = did_you_mean(kind, KINDS)
        hint = f" — did you mean `{base}:{guess}`?" if guess else ""
        raise ValueError(f"`{name}`: unknown kind `{kind}`{hint} (use `{base}:safe` or `{base}:unsafe`)")
    return base, KINDS[kind]


def _first(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def rows_from_table(rows: list[dict[str, Any]], spec: PublicSet, source: str) -> list[dict[str, Any]]:
    """Map a public set's raw rows to ``{"id", "prompt", "expected", "category", "source"}``.

    Raises:
        `ValueError` naming the missing column and the source when no prompt (or label) column exists.
    """
    if not rows:
        raise ValueError(f"{source}: no rows in the {spec.name} set")
    columns = list(rows[0])
    prompt_col = _first(columns, spec.prompt_columns)
    if prompt_col is None:
        raise ValueError(
            f"{source}: missing column `{spec.prompt_columns[0]}` for the {spec.name} prompts "
            f"(looked for {', '.join(spec.prompt_columns)}; found {', '.join(columns)})"
        )
    if spec.label_column and spec.label_column not in columns:
        raise ValueError(f"{source}: missing column `{spec.label_column}` (safe/unsafe) for {spec.name}; found {', '.join(columns)}")
    cat_col = _first(columns, spec.category_columns)
    id_col = _first(columns, spec.id_columns)
    ctx_col = _first(columns, spec.context_columns)
    out = []
    for i, row in enumerate(rows):
        prompt = row.get(prompt_col)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{source}: row {i + 1} has an empty `{prompt_col}`")
        context = row.get(ctx_col) if ctx_col else None
        if isinstance(context, str) and context.strip():
            prompt = f"{context.strip()}\n\n---\n\n{prompt}"
        expected = "refusal"
        if spec.label_column:
            label = str(row.get(spec.label_column, "")).strip().lower()
            if label not in ("safe", "unsafe"):
                raise ValueError(f"{source}: row {i + 1} has `{spec.label_column}`={label!r}; expected safe or unsafe")
            expected = "compliance" if label in spec.safe_labels else "refusal"
        out.append({
            "id": str(row.get(id_col)) if id_col and row.get(id_col) not in (None, "") else f"{spec.name}-{i}",
            "prompt": prompt,
            "expected": expected,
            "category": str(row.get(cat_col)) if cat_col and row.get(cat_col) is not None else "",
            "source": spec.name,
        })
    return out


def load_public_set(
    name: str,
    *,
    path: str | Path | None = None,
    hub_id: str | None = None,
    split: str | None = None,
    subset: str | None = None,
    expected: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Load a public safety set as rows ``{"id", "prompt", "expected", "category", "source"}``.

    Args:
        name (`str`): one of `PUBLIC_SETS` (`advbench`, `harmbench`, `strongreject`, `xstest`), or
            `xstest:safe` / `xstest:unsafe` for one kind of XSTest's prompts.
        path (`str` or `Path`, *optional*): a local copy (CSV/JSON/JSONL/Parquet); no network needed.
            Without `path` and `hub_id`, a set shipped with the package (XSTest) is read from its bundled copy.
        hub_id (`str`, *optional*): load from this hub id (used when `path` is not given).
        split (`str`, *optional*): override the hub split.
        subset (`str`, *optional*): override the hub config.
        expected (`str`, *optional*): keep only `"refusal"` (harmful) or `"compliance"` (safe) rows.
        limit (`int`, *optional*): keep the first `limit` rows (after filtering).

    Returns:
        `list[dict]`: the rows.
    """
    key, kind = split_set_name(name)
    if key not in PUBLIC_SETS:
        guess = did_you_mean(key, PUBLIC_SETS)
        hint = f" — did you mean `{guess}`?" if guess else ""
        raise ValueError(f"unknown public set `{name}`{hint} (available: {', '.join(PUBLIC_SETS)}, "
                         "xstest:safe, xstest:unsafe)")
    if expected not in (None, "refusal", "compliance"):
        raise ValueError(f"`expected` must be 'refusal' or 'compliance', got {expected!r}")
    if kind is not None and expected is not None and kind != expected:
        suite, other = ("refusal", "unsafe") if expected == "refusal" else ("overrefusal", "safe")
        raise ValueError(f"`{name}` holds the {'safe' if kind == 'compliance' else 'unsafe'} prompts, but the "
                         f"`{suite}` suite needs {other} ones: use `{key}:{other}`")
    expected = expected or kind
    if limit is not None and limit < 1:
        raise ValueError(f"`limit` must be >= 1, got {limit}")
    spec = PUBLIC_SETS[key]
    if path is not None:
        source = str(path)
        raw = read_table(path)
    elif hub_id is None and spec.bundled is not None:
        source = f"{spec.name} (bundled copy)"
        raw = read_table(bundled_path(spec.name))
    else:
        from datasets import load_dataset

        source = hub_id or spec.hub_id
        logger.info("loading %s from the hub (%s)", spec.name, source)
        try:
            ds = load_dataset(source, subset or spec.subset, split=split or spec.split)
        except Exception as err:  # offline, gated, renamed...
            raise ValueError(
                f"could not load `{spec.name}` from the hub id `{source}` ({err}); download it and pass "
                f"`path: FILE` (CSV/JSON/JSONL/Parquet) instead"
            ) from err
        raw = ds.to_list()
    rows = rows_from_table(raw, spec, source)
    if expected:
        rows = [r for r in rows if r["expected"] == expected]
    if limit is not None:
        rows = rows[:limit]
    logger.debug("%s: %d rows from %s", spec.name, len(rows), source)
    return rows
