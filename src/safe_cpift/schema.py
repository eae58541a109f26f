"""Recipe schemas on pydantic: one-line problems with dotted paths, did-you-mean hints, overrides.

A recipe section is a `Section` (a strict pydantic model that forbids unknown keys; every field
carries `Field(description=...)`). `problems_from` turns pydantic's `ValidationError` into the
project's own lines (``unknown key `top_q` in `cpift` — did you mean `top_p`? (allowed: ...)``), and
`ConfigError` (a `ValueError`) lists every problem of a config at once (torchtune style).
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import typing_extensions
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticUndefined

__all__ = [
    "ConfigError",
    "did_you_mean",
    "Section",
    "Number",
    "number",
    "problem",
    "matching",
    "problems_from",
    "draft",
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


def _hint(word: Any, candidates: Iterable[str]) -> str:
    guess = did_you_mean(word, candidates) if isinstance(word, str) else None
    return f" — did you mean `{guess}`?" if guess else ""


def _float_from_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def number(**bounds: float) -> Any:
    """A float type that also accepts an int and YAML text such as ``1e-4`` (YAML 1.1 reads it as a
    string), with optional `gt`/`ge`/`lt`/`le` bounds (shown in the JSON Schema)."""
    return Annotated[float, Field(**bounds), BeforeValidator(_float_from_text)]


Number = number()


class Section(BaseModel):
    """Base of recipe sections: strict types, unknown keys are errors, `help()` lists field help.

    A section whose `shorthand` names a field may be given as a bare string: ``data: toyworld`` means
    ``data: {source: toyworld}``; its JSON Schema then accepts a string too.
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    shorthand: ClassVar[str | None] = None

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, data: Any) -> Any:
        return {cls.shorthand: data} if isinstance(data, str) and cls.shorthand else data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        if cls.shorthand:
            schema = handler.resolve_ref_schema(schema)
            obj = dict(schema)
            schema.clear()
            schema.update(description=obj.pop("description", ""), title=obj.pop("title", cls.__name__),
                          anyOf=[{"type": "string", "description": f"shorthand for {{{cls.shorthand}: ...}}"}, obj])
        return schema

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help string."""
        return {name: f.description or "" for name, f in cls.model_fields.items()}


def problem(message: str) -> PydanticCustomError:
    """An error for a validator to raise whose `message` is the whole problem line (path included)."""
    return PydanticCustomError("safe_cpift", "{line}", {"line": message})


# ---------------------------------------------------------------------------------------------- types


def _strip(tp: Any) -> Any:
    """`tp` without `Annotated[...]` and without `| None`."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) == 1:
                tp = rest[0]
                continue
        return tp


def _is_union(tp: Any) -> bool:
    tp = _strip(tp)
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _fields(tp: Any) -> dict[str, Any] | None:
    """Field name -> annotation of a model or TypedDict; `None` for anything else."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation if not f.metadata else Annotated[(f.annotation, *f.metadata)]
                for name, f in tp.model_fields.items()}
    if typing_extensions.is_typeddict(tp):
        return typing.get_type_hints(tp, include_extras=True)
    return None


_NOWHERE = object()


def _step(tp: Any, part: str | int) -> Any:
    """The annotation one key or index below `tp` (trying each member of a union), or `_NOWHERE`."""
    tp = _strip(tp)
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for member in map(_strip, members):
        origin = typing.get_origin(member)
        if origin is list and (isinstance(part, int) or str(part).isdigit()):
            return typing.get_args(member)[0]
        if origin is dict:
            return typing.get_args(member)[1]
        fields = _fields(member)
        if fields is not None and part in fields:
            return fields[part]
    return _NOWHERE


def annotation_at(root: Any, parts: Sequence[str | int]) -> Any:
    """The annotation at dotted `parts` under `root` (list indices step into items), or `Any`."""
    tp = root
    for part in parts:
        tp = _step(tp, part)
        if tp is _NOWHERE:
            return Any
    return tp


def _union_tag_at(root: Any, loc: tuple, kind: str) -> int | None:
    """Index of the first element of an error `loc` that names a union member rather than a key."""
    tp = root
    for i, part in enumerate(loc):
        below = _step(tp, part)
        if below is _NOWHERE:
            unknown_key = kind == "extra_forbidden" and i == len(loc) - 1
            return i if _is_union(tp) and not unknown_key else None
        tp = below
    return None


def matching(pattern: re.Pattern, rule: str, guesses: Sequence[str] = ()) -> Any:
    """A string type that must match `pattern` (so marked in the JSON Schema); the error says `rule`."""
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"must be {rule}, got {value!r}{_hint(value, guesses)}")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "pattern": pattern.pattern})]


def _describe(tp: Any) -> str:
    tp = _strip(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list or tp is list:
        return "a list"
    if typing.get_origin(tp) is dict or tp is dict or _fields(tp) is not None:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, f"`{getattr(tp, '__name__', tp)}`")


# ---------------------------------------------------------------------------------------------- errors


def _path(where: str, loc: Sequence[str | int]) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__ if value is not None else 'null'})"


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "list_type": "a list",
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def _required(root: Any, where: str, loc: tuple) -> list[str]:
    """Lines for a missing key; a missing section names the required keys inside it."""
    tp = _strip(annotation_at(root, loc))
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        nested = [_required(root, where, (*loc, name)) for name, f in tp.model_fields.items() if f.is_required()]
        if nested:
            return [line for lines in nested for line in lines]
    parent = _strip(annotation_at(root, loc[:-1]))
    helptext = ""
    if isinstance(parent, type) and issubclass(parent, BaseModel) and loc[-1] in parent.model_fields:
        helptext = parent.model_fields[loc[-1]].description or ""
    return [f"missing required key `{_path(where, loc)}`" + (f" ({helptext})" if helptext else "")]


def _line(err: Mapping[str, Any], root: Any, where: str) -> list[str]:
    kind, loc, value, ctx = err["type"], tuple(err["loc"]), err.get("input"), err.get("ctx") or {}
    path = _path(where, loc)
    if kind == "safe_cpift":
        return [ctx["line"]]
    if kind == "extra_forbidden":
        section = _strip(annotation_at(root, loc[:-1]))
        members = typing.get_args(section) if _is_union(section) else (section,)
        allowed = sorted(next((f for f in (_fields(_strip(m)) for m in members) if f is not None), ()))
        section = _path(where, loc[:-1]) or "recipe"
        return [f"unknown key `{loc[-1]}` in `{section}`{_hint(loc[-1], allowed)} (allowed: {', '.join(allowed)})"]
    if kind == "missing":
        return _required(root, where, loc)
    if kind == "value_error":
        message = str(ctx.get("error", err.get("msg", "")))
        return [f"`{path}` {message}" if message.startswith(("must ", "needs ", "is ")) else f"`{path}`: {message}"]
    if kind == "literal_error":
        choices = [str(c) for c in typing.get_args(_strip(annotation_at(root, loc)))]
        return [f"`{path}` must be one of {', '.join(choices)}, got {value!r}{_hint(value, choices)}"]
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        return [f"`{path}` must be {sign} {ctx[key]}, got {value}"]
    if kind in _TYPE_WORDS:
        return [f"`{path}` must be {_TYPE_WORDS[kind]}, got {_got(value)}"]
    if kind == "too_short":
        return [f"`{path}` needs at least {ctx.get('min_length', 1)} item(s), got {len(value)}"]
    return [f"`{path}`: {err.get('msg', kind)}, got {value!r}"]


def problems_from(error: ValidationError, root: Any, where: str = "") -> list[str]:
    """One line per problem of a pydantic `ValidationError` raised while validating `root`.

    Args:
        error (`ValidationError`): what pydantic raised.
        root: the validated model class, TypedDict or annotation (used for allowed keys and choices).
        where (`str`, *optional*): dotted path of `root` in its config (`""` at the top level).

    Returns:
        `list[str]`: lines like ``unknown key `top_q` in `cpift` — did you mean `top_p`? (allowed: ...)``,
        ```cpift.top_p` must be <= 1.0, got 2``; errors of one union field become a single line.
    """
    lines: list[str] = []
    unions: set[tuple] = set()
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        cut = _union_tag_at(root, loc, err["type"])
        if cut is not None and err["type"] != "safe_cpift":
            if loc[:cut] not in unions:
                unions.add(loc[:cut])
                tp = annotation_at(root, loc[:cut])
                lines.append(f"`{_path(where, loc[:cut])}` must be {_describe(tp)}, got {err.get('input')!r}")
            continue
        lines.extend(_line(err, root, where))
    return list(dict.fromkeys(lines))


def draft(cls: type[BaseModel], raw: Any) -> Any:
    """`cls` built from `raw` without validation (defaults for what is missing), for cross-field checks.

    Values may have wrong types: checks on a draft must guard with `isinstance`.
    """
    if isinstance(raw, str) and issubclass(cls, Section) and cls.shorthand:
        raw = {cls.shorthand: raw}
    raw = raw if isinstance(raw, Mapping) else {}
    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        value = raw[name] if name in raw else field.get_default(call_default_factory=True)
        tp = _strip(field.annotation)
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if isinstance(tp, type) and issubclass(tp, BaseModel) and (name in raw or field.is_required()):
            value = draft(tp, value)
        elif isinstance(item, type) and issubclass(item, BaseModel):
            value = [draft(item, v) for v in value] if isinstance(value, list) else []
        values[name] = None if value is PydanticUndefined else value
    return cls.model_construct(**values)


# ---------------------------------------------------------------------------------------------- overrides


def parse_value(text: str, tp: Any = Any) -> Any:
    """Parse a command-line value as YAML, keeping the raw text where the field wants a string.

    ``"0.02"`` → 0.02, ``"true"`` → True, ``"[a, b]"`` → list; a string field keeps the raw text
    (``model.source=1234`` stays ``"1234"``).
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    stripped = _strip(tp)
    options = typing.get_args(stripped) if typing.get_origin(stripped) in (typing.Union, types.UnionType) else (
        stripped,)
    options = tuple(_strip(o) for o in options)
    if value is None and text.strip().lower() not in ("null", "~", "none", ""):
        return text
    if isinstance(value, (int, float, bool)) and str in options and not any(
            o in options for o in (int, float, bool)):
        return text
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
