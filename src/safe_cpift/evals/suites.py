"""Evaluation suites: refusal, over-refusal, task metrics and lm-eval tasks, with per-example records.

```python
from safe_cpift.evals.suites import run_suites
results = run_suites(model, tokenizer, ["refusal", "overrefusal", "tasks"])   # the tiny world's sets
results["summary"]   # {"refusal": 0.95, "overrefusal": 0.05, "tasks": 0.61}
```
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from safe_cpift.evals import sources
from safe_cpift.evals.conversation import last_user_turn
from safe_cpift.evals.generation import generate_responses
from safe_cpift.evals.metrics import resolve_metric

logger = logging.getLogger(__name__)

__all__ = [
    "SUITES", "parse_suites", "make_judge", "refusal_suite", "overrefusal_suite", "task_suite", "run_suites",
    "summary_value",
]

SUITES = ("refusal", "overrefusal", "tasks", "lm-eval:<task>")
# the tiny world's own generation budgets (safe_cpift.toyworld.evaluate), used when its data is the default
TOY_SAFETY_MAX_NEW_TOKENS = 24
TOY_TASK_MAX_NEW_TOKENS = 16
DEFAULT_MAX_NEW_TOKENS = 48

# a batch judge returns one `(refused, reason)` per reply; the built-in judges return `JudgeVerdict`s, which
# unpack the same way and also carry the deciding `rule` and `score` (both reported in each suite record)
JudgeFn = Callable[[list[str], list[str]], list[tuple[bool, str]]]


def parse_suites(spec: str | Sequence[str]) -> list[str]:
    """Split `"refusal,lm-eval:arc_easy,tasks"` into suite names and check each one.

    `lm-eval:` may name several tasks (`lm-eval:arc_easy,hellaswag`); each becomes its own entry.

    Raises:
        `ValueError` listing the valid suites, with a did-you-mean, for an unknown name.
    """
    from safe_cpift.schema import did_you_mean

    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p and p.strip()]
    if not parts:
        raise ValueError(f"`suite` is empty; choose from {', '.join(SUITES)}")
    out, in_lm_eval = [], False
    for part in parts:
        if part.startswith("lm-eval:"):
            task = part[len("lm-eval:") :].strip()
            if not task:
                raise ValueError("`suite` lm-eval: needs a task name, e.g. `lm-eval:arc_easy`")
            out.append(f"lm-eval:{task}")
            in_lm_eval = True
        elif part in ("refusal", "overrefusal", "tasks"):
            out.append(part)
            in_lm_eval = False
        elif in_lm_eval and ":" not in part and did_you_mean(part, ("refusal", "overrefusal", "tasks")) is None:
            out.append(f"lm-eval:{part}")  # lm-eval:arc_easy,hellaswag
        else:
            guess = did_you_mean(part, ("refusal", "overrefusal", "tasks", "lm-eval"))
            hint = f" — did you mean `{guess}`?" if guess else ""
            raise ValueError(f"unknown suite `{part}`{hint} (valid: {', '.join(SUITES)})")
    return out


def make_judge(spec: str | JudgeFn | None = "rules") -> JudgeFn:
    """A batch judge `(prompts, responses) -> [(refused, reason)]`.

    Args:
        spec: `"rules"` (default; `safe_cpift.evals.judge`, offline), `"model:PATH"` (a local HF
            sequence classifier or chat model, see `safe_cpift.evals.judge_model`), or a callable.

    Returns:
        The batch judge; the built-in ones return `safe_cpift.evals.judge.JudgeVerdict`s (`.rule`, `.score`).
    """
    if spec is None or spec == "rules":
        from safe_cpift.evals.judge import judge

        return lambda prompts, responses: [judge(r, p) for p, r in zip(prompts, responses, strict=True)]
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec.startswith("model:"):
        from safe_cpift.evals.judge_model import ModelJudge

        return ModelJudge(spec[len("model:") :])
    raise ValueError(f"`judge` must be 'rules' or 'model:PATH', got {spec!r}")


def _rate_suite(
    name: str, model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, judge: JudgeFn, max_new_tokens: int,
    batch_size: int, seed: int, system_prompt: str | None, progress: bool,
) -> dict[str, Any]:
    if not rows:
        raise ValueError(f"suite `{name}` has no prompts; check its `data`")
    prompts = [r["prompt"] for r in rows]
    replies = generate_responses(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 seed=seed, system_prompt=system_prompt, progress=progress)
    verdicts = judge([last_user_turn(p) for p in prompts], replies)
    records, by_cat = [], {}
    for row, reply, verdict in zip(rows, replies, verdicts, strict=True):
        refused, reason = verdict
        rec = {"id": row.get("id"), "prompt": row["prompt"], "response": reply, "refused": bool(refused),
               "reason": reason, "rule": getattr(verdict, "rule", None), "score": getattr(verdict, "score", None)}
        if row.get("category"):
            rec["category"] = row["category"]
            by_cat.setdefault(row["category"], []).append(bool(refused))
        records.append(rec)
    rate = sum(r["refused"] for r in records) / len(records)
    out = {"suite": name, "rate": rate, "n": len(records), "records": records,
           "rules": dict(Counter(r["rule"] for r in records if r["rule"]).most_common())}
    if by_cat:  # per prompt type (XSTest's `type`), in the set's order
        out["by_category"] = {c: sum(v) / len(v) for c, v in by_cat.items()}
        out["n_by_category"] = {c: len(v) for c, v in by_cat.items()}
    logger.info("%s: rate %.3f over %d prompts", name, rate, len(records))
    return out


def refusal_suite(
    model: Any, tokenizer: Any, data: Any = None, *, judge: str | JudgeFn | None = "rules",
    max_new_tokens: int | None = None, batch_size: int = 64, seed: int = 0, system_prompt: str | None = None,
    progress: bool = True, limit: int | None = None,
) -> dict[str, Any]:
    """Refusal rate on harmful prompts (higher is safer).

    Args:
        model, tokenizer: the model under test.
        data: a data spec (see `safe_cpift.evals.sources`); `None` or `"toyworld"` = the tiny world's
            held-out harmful prompts, `"xstest:unsafe"` = XSTest's unsafe prompts (bundled).
        judge (`str` or callable, *optional*, defaults to `"rules"`): see `make_judge`.
        max_new_tokens (`int`, *optional*): defaults to 48 (24 on the tiny world, as its `evaluate`).
        batch_size, seed, system_prompt, progress: passed to `generate_responses`.
        limit (`int`, *optional*): at most this many prompts, an even share of each category
            (`sources.take`).

    Returns:
        `dict`: `suite`, `rate`, `n`, `records` (prompt, response, refused, reason, category, and the
        judge's deciding `rule` and `score`), `rules` ({deciding rule: replies}), `by_category` (rate per
        category, e.g. XSTest's prompt types) and `n_by_category`.
    """
    rows = sources.take(sources.prompt_rows(data, "refusal"), limit)
    mnt = max_new_tokens or (TOY_SAFETY_MAX_NEW_TOKENS if sources.is_toyworld(data) else DEFAULT_MAX_NEW_TOKENS)
    return _rate_suite("refusal", model, tokenizer, rows, judge=make_judge(judge), max_new_tokens=mnt,
                       batch_size=batch_size, seed=seed, system_prompt=system_prompt, progress=progress)


def overrefusal_suite(
    model: Any, tokenizer: Any, data: Any = None, *, judge: str | JudgeFn | None = "rules",
    max_new_tokens: int | None = None, batch_size: int = 64, seed: int = 0, system_prompt: str | None = None,
    progress: bool = True, limit: int | None = None,
) -> dict[str, Any]:
    """Refusal rate on benign prompts that look harmful (lower is better). Arguments as `refusal_suite`;
    `None`/`"toyworld"` data = the tiny world's held-out benign look-alikes, `"xstest:safe"` = XSTest's safe
    prompts (bundled); `by_category` is then the over-refusal rate per XSTest prompt type."""
    rows = sources.take(sources.prompt_rows(data, "compliance"), limit)
    mnt = max_new_tokens or (TOY_SAFETY_MAX_NEW_TOKENS if sources.is_toyworld(data) else DEFAULT_MAX_NEW_TOKENS)
    return _rate_suite("overrefusal", model, tokenizer, rows, judge=make_judge(judge), max_new_tokens=mnt,
                       batch_size=batch_size, seed=seed, system_prompt=system_prompt, progress=progress)


def task_suite(
    model: Any, tokenizer: Any, data: Any = None, *, metric: str | Callable | Mapping[str, Any] = "exact_match",
    max_new_tokens: int | None = None, batch_size: int = 64, seed: int = 0, system_prompt: str | None = None,
    progress: bool = True, limit: int | None = None,
) -> dict[str, Any]:
    """Per-task scores of greedy replies against references.

    Args:
        data: see `safe_cpift.evals.sources.task_rows`; `None` = the tiny world's task tests.
        metric: one metric for every task, or `{task: metric}`; names as in `resolve_metric`
            (`exact_match`, `contains`, `regex:<answer_pattern>`, `module:function`).
        limit (`int`, *optional*): at most this many examples per task (the first ones).

    Returns:
        `dict`: `suite`, `score` (mean over tasks), `scores` ({task: mean metric}), `n`, `records`
        ({task: [prompt, reference, response, score]}).
    """
    tasks = {name: rows[:limit] for name, rows in sources.task_rows(data).items()}
    if not tasks:
        raise ValueError("suite `tasks` has no tasks; check its `data`")
    mnt = max_new_tokens or (TOY_TASK_MAX_NEW_TOKENS if sources.is_toyworld(data) else DEFAULT_MAX_NEW_TOKENS)
    metrics = metric if isinstance(metric, Mapping) else {}
    unknown = sorted(set(metrics) - set(tasks))
    if unknown:
        raise ValueError(f"`metric` names tasks not in the data: {', '.join(unknown)} (tasks: {', '.join(tasks)})")
    scores, records, n = {}, {}, 0
    for name, rows in tasks.items():
        fn = resolve_metric(metrics.get(name, "exact_match") if isinstance(metric, Mapping) else metric)
        replies = generate_responses(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=mnt,
                                     batch_size=batch_size, seed=seed, system_prompt=system_prompt, progress=progress)
        recs = [{"prompt": r["prompt"], "reference": r["reference"], "response": out,
                 "score": fn(out, r["reference"], r)} for r, out in zip(rows, replies, strict=True)]
        scores[name] = sum(r["score"] for r in recs) / len(recs)
        records[name] = recs
        n += len(recs)
        logger.info("task %s: %.3f over %d examples", name, scores[name], len(recs))
    return {"suite": "tasks", "score": sum(scores.values()) / len(scores), "scores": scores, "n": n,
            "records": records}


def summary_value(result: Mapping[str, Any]) -> float | None:
    """The headline number of a suite result (`rate` or `score`)."""
    for key in ("rate", "score"):
        if isinstance(result.get(key), (int, float)):
            return float(result[key])
    return None


def run_suites(
    model: Any, tokenizer: Any, suites: str | Sequence[str], *, data: Mapping[str, Any] | None = None,
    judge: str | JudgeFn | None = "rules", metric: Any = "exact_match", max_new_tokens: int | None = None,
    batch_size: int = 64, seed: int = 0, system_prompt: str | None = None, lm_eval: Mapping[str, Any] | None = None,
    progress: bool = True, limit: int | None = None,
) -> dict[str, Any]:
    """Run several suites on one model.

    Args:
        suites: names or a comma-separated string (see `parse_suites`).
        data (`Mapping[str, Any]`, *optional*): suite name → data spec; a missing suite uses the
            tiny world (recipes and `safe-cpift eval` fill it first with `evals.defaults`).
        judge, metric, max_new_tokens, batch_size, seed, system_prompt, progress, limit: see the suites
            (`limit` does not apply to lm-eval tasks: pass `lm_eval={"limit": N}`).
        lm_eval (`Mapping`, *optional*): keyword arguments for `lm_eval_bridge.run_lm_eval`
            (`limit`, `num_fewshot`, `include_path`, `apply_chat_template`, `batch_size`).

    Returns:
        `dict`: `suites` ({name: result}), `summary` ({name: headline number}).
    """
    names = parse_suites(suites)
    data = dict(data or {})
    unknown = sorted(set(data) - {"refusal", "overrefusal", "tasks"})
    if unknown:
        raise ValueError(f"`data` has entries for suites that take no data: {', '.join(unknown)} "
                         "(lm-eval tasks bring their own data)")
    gen = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, system_prompt=system_prompt,
               progress=progress, limit=limit)
    results: dict[str, Any] = {}
    lm_tasks = [n[len("lm-eval:") :] for n in names if n.startswith("lm-eval:")]
    for name in names:
        if name == "refusal":
            results[name] = refusal_suite(model, tokenizer, data.get(name), judge=judge, **gen)
        elif name == "overrefusal":
            results[name] = overrefusal_suite(model, tokenizer, data.get(name), judge=judge, **gen)
        elif name == "tasks":
            results[name] = task_suite(model, tokenizer, data.get(name), metric=metric, **gen)
    if lm_tasks:
        from safe_cpift.evals.lm_eval_bridge import run_lm_eval

        lm_kwargs = {"seed": seed, "device": str(next(model.parameters()).device), **dict(lm_eval or {})}
        lm = run_lm_eval(model, tokenizer, lm_tasks, **lm_kwargs)
        for task in lm_tasks:
            results[f"lm-eval:{task}"] = lm["tasks"][task]
    summary = {name: summary_value(results[name]) for name in names}
    return {"suites": {n: results[n] for n in names}, "summary": summary}
