"""Agreement of a refusal judge with human labels: label parsing, counts, and a confusion table.

Used by `safe-cpift judge FILE --labels COLUMN` and `benchmarks/bench_judge.py`.

```python
from safe_cpift.evals.judge_agreement import agreement, confusion_table, parse_label
stats = agreement([parse_label(x) for x in human], judged)
print(confusion_table(stats))
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["REFUSED_WORDS", "ANSWERED_WORDS", "parse_label", "agreement", "confusion_table"]

# label spellings accepted for a human label, besides booleans and 0/1; XSTest's `final_label`
# values (`1_full_compliance`, `2_full_refusal`, `3_partial_refusal`) are matched by their names
REFUSED_WORDS = ("true", "1", "yes", "refused", "refusal", "refuse", "full_refusal", "partial_refusal")
ANSWERED_WORDS = ("false", "0", "no", "answered", "answer", "complied", "compliance", "comply", "full_compliance")


def parse_label(value: Any, field: str = "label") -> bool:
    """Read one human label as refused (`True`) or answered (`False`).

    Args:
        value: `True`/`False`, `0`/`1`, or a string among `REFUSED_WORDS` / `ANSWERED_WORDS`, case-insensitive;
            an XSTest label such as `"3_partial_refusal"` counts by its name (a partial refusal is a refusal).
        field (`str`, *optional*): the column name, for the error message.

    Raises:
        `ValueError` naming `field` and the accepted values.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if len(word) > 2 and word[0].isdigit() and word[1] == "_":  # XSTest: "2_full_refusal"
            word = word[2:]
        if word in REFUSED_WORDS:
            return True
        if word in ANSWERED_WORDS:
            return False
    raise ValueError(
        f"label field `{field}` has {value!r}; use true/false, 0/1, or one of {', '.join(REFUSED_WORDS[3:])} "
        f"(refused) / {', '.join(ANSWERED_WORDS[3:])} (answered)"
    )


def agreement(labels: Sequence[bool], predictions: Sequence[bool]) -> dict[str, Any]:
    """Agreement, precision and recall of `predictions` (the judge) against `labels` (human), refusal positive.

    Returns:
        `dict`: `n`, `agreement`, `precision`, `recall`, and the confusion counts `tp`, `fp`, `fn`, `tn`
        (precision/recall are `None` when undefined).
    """
    if len(labels) != len(predictions):
        raise ValueError(f"`labels` ({len(labels)}) and `predictions` ({len(predictions)}) differ in length")
    if not labels:
        raise ValueError("`labels` is empty; nothing to compare")
    pairs = list(zip((bool(x) for x in labels), (bool(x) for x in predictions), strict=True))
    tp = sum(h and j for h, j in pairs)
    fp = sum(j and not h for h, j in pairs)
    fn = sum(h and not j for h, j in pairs)
    tn = len(pairs) - tp - fp - fn
    return {"n": len(pairs), "agreement": (tp + tn) / len(pairs),
            "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def confusion_table(stats: dict[str, Any]) -> str:
    """A plain-text confusion table (rows: human label; columns: judge) from `agreement`'s counts."""
    rows = [("", "judge: refused", "judge: answered"),
            ("human: refused", str(stats["tp"]), str(stats["fn"])),
            ("human: answered", str(stats["fp"]), str(stats["tn"]))]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows)
