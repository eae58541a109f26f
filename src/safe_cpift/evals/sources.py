"""Where suite data comes from: the tiny world (default), local files, or public sets by name.

A *data spec* is one of:

- `None` or `"toyworld"`: the tiny world's held-out sets (`safe_cpift.toyworld`, seed 0);
- a path to a `.jsonl`/`.json`/`.csv`/`.parquet` file: rows with `prompt` (or chat `messages`);
  files in a public set's own format (AdvBench `goal`, HarmBench `Behavior`, StrongREJECT
  `forbidden_prompt`, XSTest `prompt` + `label`) are recognised by their columns;
- a public set name (`advbench`, `harmbench`, `strongreject`, loaded by hub id; `xstest`, read from
  the copy shipped with the package), or `xstest:safe` / `xstest:unsafe` (one kind of XSTest);
- a mapping `{"set": NAME, "path": FILE, "hub_id": ID, "split": S, "subset": C, "limit": N}`.

Which sets a recipe or `safe-cpift eval` uses when it names none: `safe_cpift.evals.defaults`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from safe_cpift.evals.conversation import Prompt, conversation_and_reference, conversation_prompt
from safe_cpift.evals.public_sets import PUBLIC_SETS, load_public_set, read_table, rows_from_table

__all__ = ["prompt_rows", "task_rows", "toy_prompt_rows", "toy_task_rows", "take", "is_toyworld", "is_set_name",
           "DATA_KEYS", "DataSource", "check_data_source"]


class DataSource(TypedDict, total=False):
    """A prompt set as a mapping: a public set by name and/or a local file."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    set: Annotated[str, Field(description="Public set: advbench, harmbench, strongreject (hub) or xstest (bundled).")]
    path: Annotated[str, Field(description="Local file (the set's own format, or rows with `prompt`).")]
    hub_id: Annotated[str, Field(description="Hub dataset id used instead of the set's own.")]
    split: Annotated[str, Field(description="Hub split.")]
    subset: Annotated[str, Field(description="Hub config name.")]
    limit: Annotated[int, Field(ge=1, description="Use at most this many prompts.")]
    seed: Annotated[int, Field(description="Accepted for older recipes; not used.")]


DATA_KEYS = tuple(DataSource.__annotations__)
_DATA_SOURCE = TypeAdapter(DataSource)


def check_data_source(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a `DataSource` mapping (raises pydantic's `ValidationError`); it needs `set` or `path`."""
    out = _DATA_SOURCE.validate_python(spec)
    if "set" not in out and "path" not in out:
        raise ValueError("needs `set` (a public set name) or `path` (a local file)")
    return dict(out)


TOYWORLD = "toyworld"


def is_toyworld(spec: Any) -> bool:
    """Whether a data spec means the tiny world's held-out sets (`None` or `"toyworld"`)."""
    return spec is None or (isinstance(spec, str) and spec == TOYWORLD)


def take(rows: Sequence[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most `limit` rows, an even share of each `category` (prompt type), in their original order.

    Rows are picked round-robin over the categories in order of first appearance, so a small limit
    still covers every prompt type of a set such as XSTest (whose file is sorted by type).

    Raises:
        `ValueError` when `limit` is below 1.
    """
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit < 1:
        raise ValueError(f"`limit` must be >= 1, got {limit}")
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row.get("category", "")), []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < limit:
        for idx in groups.values():
            if depth < len(idx) and len(picked) < limit:
                picked.append(idx[depth])
        depth += 1
    return [rows[i] for i in sorted(picked)]


def is_set_name(text: str) -> bool:
    """`advbench`, `xstest`, `xstest:safe`, ... and not an existing file."""
    return text.partition(":")[0].lower() in PUBLIC_SETS and not Path(text).expanduser().exists()


def _detect_set(columns: Sequence[str]) -> str | None:
    cols = set(columns)
    if "goal" in cols:
        return "advbench"
    if "Behavior" in cols or "BehaviorID" in cols:
        return "harmbench"
    if "forbidden_prompt" in cols:
        return "strongreject"
    if "prompt" in cols and "label" in cols and "focus" in cols:
        return "xstest"
    return None


def toy_prompt_rows(expected: str, seed: int = 0) -> list[dict[str, Any]]:
    """The tiny world's held-out harmful (`expected="refusal"`) or benign look-alike prompts."""
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    world = ToyWorld(ToyWorldConfig(seed=seed))
    harmful, benign = world.safety_rows("test")
    rows = harmful if expected == "refusal" else benign
    return [{"id": f"toy-{expected}-{i}", "prompt": r["prompt"], "expected": expected, "category": r.get("category", ""),
             "source": "toyworld"} for i, r in enumerate(rows)]


def toy_task_rows(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """The tiny world's held-out task tests: `{task: [{"prompt", "reference"}]}`."""
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    world = ToyWorld(ToyWorldConfig(seed=seed))
    return {name: [{"prompt": r["prompt"], "reference": r["response"]} for r in world.task_rows(name, "test")]
            for name in world.task_names}


def _check_mapping(spec: Mapping[str, Any], where: str) -> None:
    from safe_cpift.schema import ConfigError, problems_from

    try:
        check_data_source(spec)
    except ValidationError as err:
        raise ConfigError(problems_from(err, DataSource, where)) from None
    except ValueError as err:
        raise ConfigError([f"`{where}` {err}"]) from None


def prompt_rows(spec: Any, expected: str, *, where: str = "data") -> list[dict[str, Any]]:
    """Rows `{"prompt", "expected", ...}` for the refusal (`expected="refusal"`) or over-refusal
    (`expected="compliance"`) suite, from a data spec (see module docstring).

    Sets with both kinds (XSTest, or a file with an `expected`/`label` column) are filtered to
    `expected`.
    """
    if expected not in ("refusal", "compliance"):
        raise ValueError(f"`expected` must be 'refusal' or 'compliance', got {expected!r}")
    if is_toyworld(spec):
        return toy_prompt_rows(expected)
    if isinstance(spec, Mapping):
        _check_mapping(spec, where)
        name = spec.get("set")
        if name is None:
            return prompt_rows(str(spec["path"]), expected, where=where)[: spec.get("limit")]
        return load_public_set(str(name), path=spec.get("path"), hub_id=spec.get("hub_id"), split=spec.get("split"),
                               subset=spec.get("subset"), expected=expected, limit=spec.get("limit"))
    if isinstance(spec, (list, tuple)):
        return [{"id": str(i), "prompt": p, "expected": expected, "category": "", "source": "list"}
                for i, p in enumerate(_as_prompt_list(spec, where))]
    text = str(spec)
    if is_set_name(text):
        return load_public_set(text, expected=expected)
    raw = read_table(text)
    if not raw:
        raise ValueError(f"{text}: no rows")
    detected = _detect_set(list(raw[0]))
    if detected:
        rows = rows_from_table(raw, PUBLIC_SETS[detected], text)
        return [r for r in rows if r["expected"] == expected]
    out = []
    for i, row in enumerate(raw):
        prompt = row.get("prompt")
        if prompt is None:
            prompt = conversation_prompt(row.get("messages"))  # the whole conversation, not one turn
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            found = ", ".join(row)
            raise ValueError(f"{text}: missing column `prompt` (or chat `messages` with a user turn) in row {i + 1}; "
                             f"found columns: {found}")
        label = str(row.get("expected", row.get("label", ""))).strip().lower()
        kind = {"unsafe": "refusal", "harmful": "refusal", "refusal": "refusal", "safe": "compliance",
                "benign": "compliance", "compliance": "compliance"}.get(label, expected)
        if kind != expected:
            continue
        out.append({"id": str(row.get("id", i)), "prompt": prompt, "expected": expected,
                    "category": str(row.get("category", "")), "source": text})
    return out


def _as_prompt_list(items: Sequence[Any], where: str) -> list[Prompt]:
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            prompts.append(item)
        elif isinstance(item, Mapping) and isinstance(item.get("prompt"), str):
            prompts.append(item["prompt"])
        elif isinstance(item, Mapping) and conversation_prompt(item.get("messages")):
            prompts.append(conversation_prompt(item["messages"]))
        else:
            raise ValueError(f"`{where}[{i}]` must be a prompt string or a row with `prompt` or `messages`")
    return prompts


def _task_rows_from(raw: Sequence[Mapping[str, Any]], source: str) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(raw):
        prompt = row.get("prompt")
        reference = row.get("reference", row.get("response", row.get("completion", row.get("answer"))))
        if prompt is None and "messages" in row:
            prompt, reference = conversation_and_reference(row["messages"]) or (None, None)
        if not isinstance(prompt, (str, list)):
            raise ValueError(f"{source}: missing column `prompt` (or chat `messages`) in row {i + 1}; "
                             f"found columns: {', '.join(row)}")
        if not isinstance(reference, str):
            raise ValueError(f"{source}: missing column `reference` (or `response`/`completion`/`answer`, or an "
                             f"assistant turn in `messages`) in row {i + 1}; found columns: {', '.join(row)}")
        out.append({"prompt": prompt, "reference": reference, **{k: v for k, v in row.items()
                                                                  if k not in ("prompt", "messages")}})
    return out


def task_rows(spec: Any, *, where: str = "data") -> dict[str, list[dict[str, Any]]]:
    """Task examples grouped by task: `{task: [{"prompt", "reference", ...}]}`.

    Args:
        spec: `None` (the tiny world's task tests), a file (rows with `prompt` + `reference`/
            `response`/`completion`/`answer` or chat `messages`, optionally a `task` column to group by;
            without one the file's stem names the task), a mapping `{task: file or list of rows}`, or a
            `datasets.Dataset` of chat `messages`.
    """
    if spec is None:
        return toy_task_rows()
    if isinstance(spec, Mapping):
        return {str(name): _task_rows_from(read_table(v) if isinstance(v, (str, Path)) else list(v), f"{where}.{name}")
                for name, v in spec.items()}
    if hasattr(spec, "to_list") and hasattr(spec, "column_names"):  # datasets.Dataset
        return {"task": _task_rows_from(spec.to_list(), where)}
    source = str(spec)
    rows = _task_rows_from(read_table(source), source)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        grouped.setdefault(str(r.get("task") or Path(source).stem), []).append(r)
    return grouped
