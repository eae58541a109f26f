"""The evaluator every method goes through: task metrics, refusal and over-refusal on the same prompts.

`Evaluator(model, tokenizer)` returns `task_scores`, `task_mean`, `refusal_rate`,
`over_refusal_rate`, `refusal_by_type` / `over_refusal_by_type` (the rate per prompt type, e.g.
XSTest's homonyms, figurative language, ..., when the prompts carry types), `general_scores` (when the
recipe names `lm-eval:<task>` suites) and per-example `records`. Generation is greedy, batched and
chat-templated (`safe_cpift.evals.generation`); refusals are judged by `safe_cpift.evals.judge.verdict`
(records keep the deciding rule); lm-eval tasks run on the in-memory model through
`safe_cpift.evals.lm_eval_bridge.run_lm_eval`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from safe_cpift.evals.conversation import Prompt, conversation_and_reference

logger = logging.getLogger(__name__)

Metric = Callable[[str, str], float]


def prompt_and_reference(messages: list[dict[str, str]]) -> tuple[Prompt, str]:
    """The conversation up to the final assistant turn (system prompt and earlier turns included; a
    string when it is one user turn) and that final turn, the reference answer."""
    pair = conversation_and_reference(messages)
    if pair is None:
        raise ValueError("a test conversation needs a user turn and must end with the assistant's reference answer")
    return pair


@dataclass
class TaskEval:
    """One task's test set: `prompts`, `references` and the metric."""

    prompts: list[Prompt]
    references: list[str]
    metric: Metric


@dataclass
class Evaluator:
    """Scores a model on the recipe's suites. `None` prompt lists skip that suite (reported as `None`).

    `harmful_types` / `benign_types` give each prompt's type (parallel to the prompts; "" = none);
    `sets` says which set each prompt list came from (reported in results.json as `eval_sets`).
    """

    tasks: dict[str, TaskEval]
    harmful: list[Prompt] | None
    benign: list[Prompt] | None
    harmful_types: list[str] | None = None
    benign_types: list[str] | None = None
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_new_tokens: int = 48
    batch_size: int = 64
    notes: list[str] = field(default_factory=list)
    lm_eval_tasks: list[str] = field(default_factory=list)

    def sizes(self) -> dict[str, Any]:
        """How many examples each suite scores (small sets give noisy rates)."""
        out = {"task_examples": {n: len(t.prompts) for n, t in self.tasks.items()},
               "harmful": len(self.harmful or []), "benign": len(self.benign or [])}
        for key, types in (("harmful_by_type", self.harmful_types), ("benign_by_type", self.benign_types)):
            if types and any(types):
                out[key] = {t: types.count(t) for t in dict.fromkeys(types)}
        return out

    def _generate(self, model: Any, tokenizer: Any, prompts: list[Prompt]) -> list[str]:
        from safe_cpift.evals.generation import generate_responses

        return generate_responses(model, tokenizer, prompts, max_new_tokens=self.max_new_tokens,
                                  batch_size=self.batch_size, seed=0, progress=False)

    def _refusals(self, model: Any, tokenizer: Any, prompts: list[Prompt],
                  types: list[str] | None) -> tuple[float, dict[str, float] | None, list[dict]]:
        from safe_cpift.evals.judge import verdict

        replies = self._generate(model, tokenizer, prompts)
        records = []
        for p, r in zip(prompts, replies, strict=True):
            decided = verdict(r)
            records.append({"prompt": p, "response": r, "refused": decided.refused, "rule": decided.rule})
        by_type = None
        if types and any(types):
            groups: dict[str, list[bool]] = {}
            for rec, kind in zip(records, types, strict=True):
                rec["type"] = kind
                groups.setdefault(kind, []).append(rec["refused"])
            by_type = {kind: sum(v) / len(v) for kind, v in groups.items()}
        return sum(r["refused"] for r in records) / len(records), by_type, records

    def _score_task(self, model: Any, tokenizer: Any, name: str) -> tuple[float, list[dict]]:
        task = self.tasks[name]
        replies = self._generate(model, tokenizer, task.prompts)
        recs = [{"prompt": p, "reference": ref, "response": r, "score": task.metric(r, ref)}
                for p, ref, r in zip(task.prompts, task.references, replies, strict=True)]
        return sum(r["score"] for r in recs) / len(recs), recs

    def score_tasks(self, model: Any, tokenizer: Any, names: list[str] | None = None) -> dict[str, float]:
        """Only the task metrics of `names` (default: every task): no safety suites, no lm-eval.

        Used where a stage needs task scores alone (each task's model trained alone, every task after
        every pipeline stage), at a fraction of a full evaluation's cost.
        """
        unknown = [n for n in names or () if n not in self.tasks]
        if unknown:
            raise ValueError(f"no test set for tasks {unknown}; tasks with one: {', '.join(self.tasks)}")
        return {n: self._score_task(model, tokenizer, n)[0] for n in (names or list(self.tasks))}

    def refusal_rate(self, model: Any, tokenizer: Any) -> float | None:
        """Only the refusal rate on the harmful prompts (`None` without a harmful set)."""
        if not self.harmful:
            return None
        return self._refusals(model, tokenizer, self.harmful, self.harmful_types)[0]

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        scores, records = {}, {}
        for name in self.tasks:
            scores[name], records[name] = self._score_task(model, tokenizer, name)
        out: dict[str, Any] = {"task_scores": scores,
                               "task_mean": sum(scores.values()) / len(scores) if scores else None}
        for key, prompts, types, label in (("refusal_rate", self.harmful, self.harmful_types, "harmful"),
                                           ("over_refusal_rate", self.benign, self.benign_types, "benign")):
            if prompts:
                out[key], by_type, records[label] = self._refusals(model, tokenizer, prompts, types)
                if by_type is not None:
                    out[key.replace("_rate", "_by_type")] = by_type
            else:
                out[key] = None
        if self.lm_eval_tasks:
            out["general_scores"], records["lm_eval"] = self._general(model, tokenizer)
        out["records"] = records
        return out

    def _general(self, model: Any, tokenizer: Any) -> tuple[dict[str, float], dict[str, Any]]:
        """General capability: each lm-eval task's primary metric on the in-memory model."""
        from safe_cpift.evals.lm_eval_bridge import run_lm_eval

        res = run_lm_eval(model, tokenizer, self.lm_eval_tasks, apply_chat_template=True,
                          batch_size=self.batch_size, device=str(next(model.parameters()).device))
        scores = {task: r["score"] for task, r in res["tasks"].items()}
        return scores, {task: {"metric": r["metric"], "n": r["n"], "records": r["records"]}
                        for task, r in res["tasks"].items()}
