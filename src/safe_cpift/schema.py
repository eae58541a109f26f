"""Validation helpers shared by run recipes and eval recipes.

Every checker returns a list of problem strings instead of raising, so that a caller can collect
every problem of a config and raise one `ConfigError` listing them all (torchtune style).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "check_keys",
    "did_you_mean",
    "check_type",
    "check_bool",
    "check_int",
    "check_float",
    "check_str",
    "check_choice",
    "check_str_list",
    "raise_if_problems",
    "RecipeSection",
    "check_value",
    "build_section",
    "annotation_at",
    "parse_value",
    "set_dotted",
]


class ConfigError(ValueError):
    """A configuration with one or more problems; the message lists every one of them.

    Args:
        problems (`list[str]`):
            One human-readable line per problem; each names the offending field in backticks.
        source (`str`, *optional*):
            Where the config came from (a file path), shown in the first line of the message.
    """

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems: list[str] = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''}{where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to `word` (difflib ratio ≥ 0.6, case-insensitive), or `None`."""
    cands = [str(c) for c in candidates]
    lowered = {c.lower(): c for c in cands}
    hits = difflib.get_close_matches(str(word).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hits[0]] if hits else None


def _suggest(word: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    guess = did_you_mean(word, allowed)
    hint = f" — did you mean `{guess}`?" if guess else ""
    return f"{hint} (allowed: {', '.join(sorted(allowed))})"


def check_keys(mapping: Mapping[str, Any], allowed: Iterable[str], where: str) -> list[str]:
    """Problems for keys of `mapping` that are not in `allowed`.

    Args:
        mapping (`Mapping[str, Any]`): the section read from YAML/JSON.
        allowed (`Iterable[str]`): the keys the section accepts.
        where (`str`): dotted path of the section, used in the message (e.g. ``"cpift"``).

    Returns:
        `list[str]`: one line per unknown key, e.g.
        ``unknown key `top_q` in `cpift` — did you mean `top_p`? (allowed: scope, tau, top_p)``.
    """
    allowed = list(allowed)
    problems = []
    for key in mapping:
        if key not in allowed:
            problems.append(f"unknown key `{key}` in `{where}`{_suggest(str(key), allowed)}")
    return problems


def _type_name(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def check_type(value: Any, types: type | tuple[type, ...], field: str, what: str) -> list[str]:
    """Problem if `value` is not an instance of `types` (`what` describes the expected type)."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        return [f"`{field}` must be {what}, got {value!r} (bool)"]
    if not isinstance(value, types):
        return [f"`{field}` must be {what}, got {value!r} ({_type_name(value)})"]
    return []


def check_bool(value: Any, field: str) -> list[str]:
    """Problem if `value` is not `true`/`false`."""
    if not isinstance(value, bool):
        return [f"`{field}` must be true or false, got {value!r} ({_type_name(value)})"]
    return []


def check_int(value: Any, field: str, *, min: int | None = None, max: int | None = None) -> list[str]:
    """Problem if `value` is not an integer within `[min, max]`."""
    if isinstance(value, bool) or not isinstance(value, int):
        return [f"`{field}` must be an integer, got {value!r} ({_type_name(value)})"]
    if min is not None and value < min:
        return [f"`{field}` must be >= {min}, got {value}"]
    if max is not None and value > max:
        return [f"`{field}` must be <= {max}, got {value}"]
    return []


def check_float(
    value: Any,
    field: str,
    *,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
) -> list[str]:
    """Problem if `value` is not a number within the given range (ints are accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"`{field}` must be a number, got {value!r} ({_type_name(value)})"]
    if min is not None and (value <= min if min_exclusive else value < min):
        return [f"`{field}` must be {'>' if min_exclusive else '>='} {min}, got {value}"]
    if max is not None and (value >= max if max_exclusive else value > max):
        return [f"`{field}` must be {'<' if max_exclusive else '<='} {max}, got {value}"]
    return []


def check_str(value: Any, field: str, *, allow_empty: bool = False) -> list[str]:
    """Problem if `value` is not a (non-empty) string."""
    if not isinstance(value, str):
        return [f"`{field}` must be a string, got {value!r} ({_type_name(value)})"]
    if not allow_empty and not value.strip():
        return [f"`{field}` must not be empty"]
    return []


def check_choice(value: Any, choices: Iterable[str], field: str) -> list[str]:
    """Problem if `value` is not one of `choices` (with a did-you-mean)."""
    choices = list(choices)
    if value not in choices:
        return [f"`{field}` must be one of {', '.join(map(str, choices))}, got {value!r}"
                + (f" — did you mean `{g}`?" if isinstance(value, str) and (g := did_you_mean(value, choices)) else "")]
    return []


def check_str_list(value: Any, field: str, *, choices: Iterable[str] | None = None) -> list[str]:
    """Problem if `value` is not a list of strings (each in `choices` when given)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return [f"`{field}` must be a list of strings, got {value!r}"]
    if choices is None:
        return []
    choices = list(choices)
    problems = []
    for i, v in enumerate(value):
        problems += check_choice(v, choices, f"{field}[{i}]")
    return problems


def raise_if_problems(problems: Sequence[str], source: str | None = None) -> None:
    """Raise `ConfigError(problems)` when the list is not empty."""
    if problems:
        raise ConfigError(problems, source=source)


# ----------------------------------------------------------------------------------------------
# Dataclass-driven validation: a section is a dataclass whose fields carry `metadata={"help": ...}`
# plus optional checks (`choices`, `min`, `max`, `min_exclusive`, `max_exclusive`).


class RecipeSection:
    """Mixin for config dataclasses: `help()` returns field name -> help string."""

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _range_checks(value: Any, where: str, meta: Mapping[str, Any]) -> list[str]:
    if "choices" in meta:
        return check_choice(value, meta["choices"], where)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ("min" in meta or "max" in meta):
        return check_float(value, where, min=meta.get("min"), max=meta.get("max"),
                           min_exclusive=meta.get("min_exclusive", False),
                           max_exclusive=meta.get("max_exclusive", False))
    return []


def check_value(value: Any, tp: Any, where: str, meta: Mapping[str, Any],
                shorthand: Mapping[type, str] | None = None) -> tuple[Any, list[str]]:
    """Check `value` against the annotation `tp` (and `meta` checks); return (converted value, problems).

    Supports bool, int, float (a YAML string such as ``1e-4`` is converted), str, enums, `X | None`,
    unions, `list[X]`, `dict[str, X]`, `Any` and nested dataclasses (built with `build_section`).
    Unknown annotation types are accepted as they are.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value, []
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return (None, []) if type(None) in args else (None, [f"`{where}` must be {_describe(tp)}, got null"])
        first: list[str] | None = None
        for arg in args:
            if arg is type(None):
                continue
            out, problems = check_value(value, arg, where, meta, shorthand)
            if not problems:
                return out, []
            first = first if first is not None else problems
        if len([a for a in args if a is not type(None)]) == 1 and first:
            return value, first
        return value, [f"`{where}` must be {_describe(tp)}, got {value!r}"]
    if dataclasses.is_dataclass(tp):
        problems: list[str] = []
        out = build_section(tp, value, where, problems, shorthand)
        return out, problems
    if origin is list:
        if not isinstance(value, list):
            return value, [f"`{where}` must be {_describe(tp)}, got {value!r}"]
        items, problems = [], []
        for i, item in enumerate(value):
            out, errs = check_value(item, args[0] if args else Any, f"{where}[{i}]", {}, shorthand)
            items.append(out)
            problems += errs
        return items, problems
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            return value, [f"`{where}` must be a mapping, got {value!r}"]
        vtype = args[1] if len(args) == 2 else Any
        items, problems = {}, []
        for k, v in value.items():
            items[k], errs = check_value(v, vtype, f"{where}.{k}", {}, shorthand)
            problems += errs
        return items, problems
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        if isinstance(value, tp):
            return value, []
        return value, check_choice(value, [str(v) for v in values], where)
    if tp is bool:
        return value, check_bool(value, where)
    if tp is int:
        return value, check_int(value, where) or _range_checks(value, where, meta)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return value, [f"`{where}` must be a number, got {value!r}"]
        return value, check_float(value, where) or _range_checks(value, where, meta)
    if tp is str:
        return value, check_str(value, where, allow_empty=True) or _range_checks(value, where, meta)
    return value, []


def build_section(cls: type, raw: Any, where: str, problems: list[str],
                  shorthand: Mapping[type, str] | None = None) -> Any:
    """Validate `raw` against dataclass `cls`, appending every problem to `problems`.

    An invalid field falls back to its default, and a missing or invalid required field is set to
    `None`, so that the caller's cross-field checks still run and every problem is reported at once
    (the caller must raise when `problems` is not empty). `None` only when `raw` is not a mapping.

    Args:
        cls (`type`): the dataclass.
        raw: the mapping read from YAML (`None` means an empty section; a string means
            ``{shorthand[cls]: raw}`` when `cls` is in `shorthand`).
        where (`str`): dotted path of the section (`""` at the top level).
        problems (`list[str]`): receives one line per problem.
        shorthand (`Mapping[type, str]`, *optional*): sections that may be given as a bare string.
    """
    shorthand = shorthand or {}
    if raw is None:
        raw = {}
    if isinstance(raw, str) and cls in shorthand:
        raw = {shorthand[cls]: raw}
    label = where or "recipe"
    if not isinstance(raw, Mapping):
        problems.append(f"`{label}` must be a mapping, got {raw!r}")
        return None
    fields = [f for f in dataclasses.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)
    problems.extend(check_keys(raw, [f.name for f in fields], label))
    kwargs = {}
    for f in fields:
        path = f"{where}.{f.name}" if where else f.name
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if f.name not in raw:
            if has_default:
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                kwargs[f.name] = build_section(hints[f.name], {}, path, problems, shorthand)
            else:
                problems.append(f"missing required key `{path}` ({f.metadata.get('help', '')})")
                kwargs[f.name] = None
            continue
        value, errs = check_value(raw[f.name], hints[f.name], path, f.metadata, shorthand)
        problems.extend(errs)
        if errs:
            item_type = (typing.get_args(hints[f.name]) or (None,))[0]
            if isinstance(value, list) and dataclasses.is_dataclass(item_type):
                value = [v for v in value if v is not None]  # keep the (partly invalid) items for later checks
            elif dataclasses.is_dataclass(hints[f.name]) and value is not None:
                pass
            elif has_default:
                continue
            else:
                value = None
        kwargs[f.name] = value
    return cls(**kwargs)


def annotation_at(cls: type, parts: Sequence[str]) -> Any:
    """The annotation of the field at dotted `parts` under dataclass `cls` (list indices skipped), or `Any`."""
    tp: Any = cls
    for part in parts:
        while typing.get_origin(tp) in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = non_none[0] if len(non_none) == 1 else Any
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0] if part.isdigit() else Any
            if part.isdigit():
                continue
        if not dataclasses.is_dataclass(tp):
            return Any
        tp = typing.get_type_hints(tp).get(part, Any)
    return tp


def parse_value(text: str, tp: Any = Any) -> Any:
    """Parse a command-line value as YAML, then fit it to annotation `tp` where that is unambiguous.

    ``"0.02"`` → 0.02, ``"true"`` → True, ``"[a, b]"`` → list; a string field keeps the raw text
    (``model.source=1234`` stays ``"1234"``); a float field accepts ``1e-4``.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if value is None and text.strip().lower() not in ("null", "~", "none", ""):
        return text
    if isinstance(value, (int, float, bool)) and str in options and not any(
            o in options for o in (int, float, bool)):
        return text
    if isinstance(value, str) and float in options:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def set_dotted(raw: Mapping[str, Any], overrides: Iterable[str],
               annotation: Callable[[list[str]], Any] = lambda parts: Any) -> dict[str, Any]:
    """Return a deep copy of `raw` with ``a.b.c=value`` strings applied (``a.0.b`` indexes a list).

    Values are parsed with `parse_value(text, annotation(parts))`. A string found where a section is
    needed becomes ``{"source": string}`` (the shorthand sections). Raises `ConfigError` listing
    every malformed override.
    """
    out = copy.deepcopy(dict(raw))
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            problems.append(f"override `{item}` must look like key.sub=value (e.g. cpift.top_p=0.02)")
            continue
        node: Any = out
        for depth, part in enumerate(parts):
            where = ".".join(parts[: depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    problems.append(f"override `{item}`: `{where}` needs a list index below {len(node)}")
                    break
                part = int(part)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                problems.append(f"override `{item}`: `{'.'.join(parts[:depth])}` is not a section")
                break
            if last:
                node[part] = parse_value(text, annotation(parts))
            else:
                child = node[part] if isinstance(node, list) else node.get(part)
                if not isinstance(child, (dict, list)):
                    child = {} if child is None else {"source": child}
                    node[part] = child
                node = child
    if problems:
        raise ConfigError(problems, source="command-line overrides")
    return out
