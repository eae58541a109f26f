"""Small validation helpers shared by run recipes and eval recipes.

Every checker returns a list of problem strings instead of raising, so that a caller can collect
every problem of a config and raise one `ConfigError` listing them all (torchtune style).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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
