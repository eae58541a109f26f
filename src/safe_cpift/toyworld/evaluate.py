"""Scoring a model on the tiny world: exact-match task accuracy, refusal and over-refusal rates."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

TASK_MAX_NEW_TOKENS = 16
SAFETY_MAX_NEW_TOKENS = 24


def _generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    from safe_cpift.evals.generation import generate_responses

    return generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=0)


def is_refusal(text: str) -> bool:
    """The project's refusal judge (`safe_cpift.evals.judge.is_refusal`)."""
    from safe_cpift.evals.judge import is_refusal as judge

    return bool(judge(text))


def exact_match(prediction: str, reference: str) -> bool:
    """Exact match after stripping surrounding whitespace (`safe_cpift.evals.metrics.exact_match`)."""
    from safe_cpift.evals.metrics import exact_match as metric

    return bool(metric(prediction, reference))


def task_accuracy(model: Any, tokenizer: Any, rows: Sequence[dict], batch_size: int = 64) -> tuple[float, list[dict]]:
    """Exact-match accuracy of greedy replies to `rows` (`{"prompt", "response"}`); with records."""
    if not rows:
        raise ValueError("`rows` is empty; pass at least one task example")
    replies = _generate(model, tokenizer, [r["prompt"] for r in rows], TASK_MAX_NEW_TOKENS, batch_size)
    records = [{"prompt": r["prompt"], "reference": r["response"], "response": out,
                "correct": exact_match(out, r["response"])} for r, out in zip(rows, replies, strict=False)]
    return sum(r["correct"] for r in records) / len(records), records


def refusal_rate(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 64) -> tuple[float, list[dict]]:
    """Fraction of `prompts` whose greedy reply the judge calls a refusal; with records."""
    if not prompts:
        raise ValueError("`prompts` is empty; pass at least one prompt")
    replies = _generate(model, tokenizer, list(prompts), SAFETY_MAX_NEW_TOKENS, batch_size)
    records = [{"prompt": p, "response": out, "refused": is_refusal(out)} for p, out in zip(prompts, replies, strict=False)]
    return sum(r["refused"] for r in records) / len(records), records


def evaluate_world(
    model: Any, tokenizer: Any, task_rows: dict[str, list[dict]], harmful_prompts: list[str],
    benign_prompts: list[str], *, batch_size: int = 64, return_records: bool = False,
) -> dict[str, Any]:
    """Scores in the results.json schema: `task_scores`, `task_mean`, `refusal_rate`, `over_refusal_rate`."""
    scores, records = {}, {}
    for name, rows in task_rows.items():
        scores[name], records[name] = task_accuracy(model, tokenizer, rows, batch_size)
    refusal, records["harmful"] = refusal_rate(model, tokenizer, harmful_prompts, batch_size)
    over, records["benign"] = refusal_rate(model, tokenizer, benign_prompts, batch_size)
    out: dict[str, Any] = {
        "task_scores": scores,
        "task_mean": sum(scores.values()) / len(scores) if scores else 0.0,
        "refusal_rate": refusal,
        "over_refusal_rate": over,
    }
    if return_records:
        out["records"] = records
    logger.info("task_mean=%.3f refusal=%.3f over_refusal=%.3f", out["task_mean"], refusal, over)
    return out
