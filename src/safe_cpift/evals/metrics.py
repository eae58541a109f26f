"""Per-example task metrics: exact match, contains, regex, or a user function `module:function`."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

__all__ = ["BUILTIN_METRICS", "resolve_metric", "exact_match", "contains"]

Metric = Callable[[str, str, dict], float]


def exact_match(response: str, reference: str, row: dict | None = None) -> float:
    """1.0 when the reply equals the reference after stripping surrounding whitespace."""
    return float(response.strip() == reference.strip())


def contains(response: str, reference: str, row: dict | None = None) -> float:
    """1.0 when the reference appears in the reply (case-insensitive, whitespace-normalised)."""
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    return float(norm(reference) in norm(response))


def _regex(pattern: str | None) -> Metric:
    compiled = re.compile(pattern) if pattern else None

    def metric(response: str, reference: str, row: dict | None = None) -> float:
        rx = compiled if compiled is not None else re.compile(reference)
        return float(rx.search(response) is not None)

    metric.__name__ = f"regex:{pattern}" if pattern else "regex"
    return metric


BUILTIN_METRICS = ("exact_match", "contains", "regex", "regex:<pattern>", "<module>:<function>")


def resolve_metric(spec: str | Callable[..., Any]) -> Metric:
    """Turn a metric name into a function `(response, reference, row) -> float`.

    Args:
        spec (`str` or callable): `exact_match`, `contains`, `regex` (the reference is the pattern),
            `regex:<pattern>` (searched in the reply), `<module>:<function>` (imported; called as
            `function(response, reference, row)` and must return a number or bool), or a callable.

    Returns:
        The metric function.
    """
    if callable(spec):
        fn = spec
    elif not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"`metric` must be a name such as 'exact_match', got {spec!r}")
    elif spec == "exact_match":
        return exact_match
    elif spec == "contains":
        return contains
    elif spec == "regex" or spec.startswith("regex:"):
        pattern = spec[len("regex:") :] if spec.startswith("regex:") else None
        try:
            return _regex(pattern)
        except re.error as err:
            raise ValueError(f"`metric` {spec!r}: invalid regular expression ({err})") from None
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"`metric` {spec!r}: cannot import module `{module_name}` ({err})") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise ValueError(f"`metric` {spec!r}: module `{module_name}` has no function `{attr}`")
    else:
        from safe_cpift.schema import did_you_mean

        guess = did_you_mean(spec, ["exact_match", "contains", "regex"])
        hint = f" — did you mean `{guess}`?" if guess else ""
        raise ValueError(f"unknown `metric` {spec!r}{hint} (use one of {', '.join(BUILTIN_METRICS)})")

    def wrapped(response: str, reference: str, row: dict | None = None) -> float:
        value = fn(response, reference, row or {})
        if isinstance(value, bool) or isinstance(value, (int, float)):
            return float(value)
        raise TypeError(f"metric {spec!r} returned {type(value).__name__}; it must return a number or bool")

    return wrapped
