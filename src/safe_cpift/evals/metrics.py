"""Task metrics — the one implementation behind `run` (recipes), `eval` and the lm-eval task files.

- ``exact_match`` (alias ``exact``): the stripped reply equals the stripped reference.
- ``contains``: the reference occurs in the reply, case-insensitive and whitespace-normalised.
- ``regex`` with an `answer_pattern`: the answer (group 1, or the whole match) is extracted from the
  reply and from the reference and compared; a reference without a match is compared whole. The
  reference is data, never a pattern. ``regex:<answer_pattern>`` is the same with the pattern inline.
- ``<module>:<function>`` or ``python:<module>:<function>``: your function
  `function(response, reference, row)` (or `(response, reference)`), returning a number or bool.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

__all__ = ["BUILTIN_METRICS", "resolve_metric", "exact_match", "contains", "regex_match", "extract_answer"]

Metric = Callable[..., float]
BUILTIN_METRICS = ("exact_match", "contains", "regex (with answer_pattern)", "regex:<answer_pattern>",
                   "<module>:<function>")
ALIASES = {"exact": "exact_match"}


def exact_match(response: str, reference: str, row: dict | None = None) -> float:
    """1.0 when the reply equals the reference after stripping surrounding whitespace."""
    return float(response.strip() == reference.strip())


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def contains(response: str, reference: str, row: dict | None = None) -> float:
    """1.0 when the reference appears in the reply (case-insensitive, whitespace-normalised)."""
    return float(_norm(reference) in _norm(response))


def extract_answer(text: str, pattern: re.Pattern[str]) -> str | None:
    """Group 1 of the first match of `pattern` in `text` (the whole match without groups), stripped."""
    m = pattern.search(text)
    if m is None:
        return None
    return (m.group(1) if m.groups() else m.group(0)).strip()


def regex_match(response: str, reference: str, answer_pattern: str | re.Pattern[str]) -> float:
    """1.0 when the answer extracted from the reply equals the one extracted from the reference.

    e.g. `answer_pattern = r"####\\s*(-?[\\d,.]+)"` for GSM8K. A reference without a match is compared
    whole (stripped); a reply without a match scores 0.
    """
    pattern = re.compile(answer_pattern) if isinstance(answer_pattern, str) else answer_pattern
    got = extract_answer(response, pattern)
    want = extract_answer(reference, pattern)
    return float(got is not None and got == (want if want is not None else reference.strip()))


def _regex(answer_pattern: str | None, spec: str) -> Metric:
    if not answer_pattern:
        raise ValueError(f"`metric` {spec!r} needs an `answer_pattern` (the regex that extracts the answer from "
                         "the reply and the reference), e.g. `regex:####\\s*(-?[\\d,.]+)` or `answer_pattern:` "
                         "in the recipe")
    try:
        compiled = re.compile(answer_pattern)
    except re.error as err:
        raise ValueError(f"`answer_pattern` {answer_pattern!r} is not a valid regular expression ({err})") from None

    def metric(response: str, reference: str, row: dict | None = None) -> float:
        return regex_match(response, reference, compiled)

    metric.__name__ = f"regex:{answer_pattern}"
    return metric


def _import(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.removeprefix("python:").rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"`metric` {spec!r}: cannot import module `{module_name}` ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"`metric` {spec!r}: module `{module_name}` has no function `{attr}`")
    return fn


def _takes_row(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def resolve_metric(spec: str | Callable[..., Any], answer_pattern: str | None = None) -> Metric:
    """Turn a metric name into a function `(response, reference, row=None) -> float`.

    Args:
        spec (`str` or callable): a name from the module docstring, or a callable.
        answer_pattern (`str`, *optional*): the answer-extracting regex of ``regex``.

    Raises:
        `ValueError` naming the metric: unknown name (with a did-you-mean), ``regex`` without an
        `answer_pattern`, an invalid pattern, or a function that cannot be imported.
    """
    if callable(spec):
        fn = spec
    elif not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"`metric` must be a name such as 'exact_match', got {spec!r}")
    else:
        name = ALIASES.get(spec, spec)
        if name == "exact_match":
            return exact_match
        if name == "contains":
            return contains
        if name == "regex":
            return _regex(answer_pattern, spec)
        if name.startswith("regex:"):
            inline = name[len("regex:") :]
            if answer_pattern and answer_pattern != inline:
                raise ValueError(f"`metric` {spec!r} and `answer_pattern` {answer_pattern!r} disagree; give one")
            return _regex(inline, spec)
        if ":" not in name:
            from safe_cpift.schema import did_you_mean

            guess = did_you_mean(spec, ["exact_match", "exact", "contains", "regex"])
            hint = f" — did you mean `{guess}`?" if guess else ""
            raise ValueError(f"unknown `metric` {spec!r}{hint} (use one of {', '.join(BUILTIN_METRICS)})")
        fn = _import(name)
    takes_row = _takes_row(fn)

    def wrapped(response: str, reference: str, row: dict | None = None) -> float:
        value = fn(response, reference, row or {}) if takes_row else fn(response, reference)
        if isinstance(value, (bool, int, float)):
            return float(value)
        raise TypeError(f"metric {spec!r} returned {type(value).__name__}; it must return a number or bool")

    wrapped.__name__ = getattr(fn, "__name__", "metric")
    return wrapped
