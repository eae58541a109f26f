"""The training budget: how many examples each method and each stage gets, and what each method paid.

`examples_per_method` is the budget of every method's final fine-tuning: the pipelined stages of
`cpift` / `safe_cpift` share it (split evenly over the tasks, each group's stage getting its tasks'
shares; for `safe_cpift` a `safety_mix` share of each stage's examples are safety examples, taken out
of the same budget), and each SFT baseline trains on it. With `include_probes` on (the fair default)
each SFT baseline also gets what `safe_cpift`'s probes cost (safety probe + task probes), so every
baseline trains on exactly as many examples as `safe_cpift` did in total: a method cannot look safer
merely because it trained less.
"""

from __future__ import annotations

from typing import Any

from safe_cpift.pipeline.common import RunContext, split_evenly
from safe_cpift.pipeline.spec import BALANCED, PROTECTED_METHODS, PipelineSpec

CPIFT_METHODS = ("cpift", "safe_cpift")


def safety_probe_examples(spec: PipelineSpec) -> int:
    """Examples of the safety probe (the short safety SFT that gives an `update`-scored safety core; 0 otherwise)."""
    return spec.safety_probe_examples if spec.safety_scorer == "update" else 0


def probe_examples(spec: PipelineSpec, method: str) -> int:
    """Examples the probes of `method` train on (the safety probe belongs to `safe_cpift` only)."""
    n = spec.probe_examples * len(spec.task_names)
    return n + safety_probe_examples(spec) if method == "safe_cpift" else n


def stage_budget(spec: PipelineSpec, method: str) -> int:
    """Examples of the pipelined stages of `method` (`cpift` or `safe_cpift`), all groups together."""
    return spec.examples_per_method


def baseline_examples(spec: PipelineSpec) -> int:
    """Examples of each SFT baseline: the budget, plus `safe_cpift`'s probes when `include_probes`."""
    return spec.examples_per_method + (probe_examples(spec, "safe_cpift") if spec.include_probes else 0)


def uses_safety(spec: PipelineSpec, method: str) -> bool:
    """Whether `method` mixes safety examples into its training (`safe_cpift` and `protected_sft`, with `safety_mix`)."""
    return method in PROTECTED_METHODS and spec.mix_safety and spec.safety_mix > 0


def replay_examples(replay_fraction: float | str, task_rows: int, n_new: int, n_earlier: int) -> int:
    """How many of a stage's `task_rows` replay the `n_earlier` earlier tasks (the new group has `n_new`).

    A float is the replayed share; `balanced` splits the rows equally over all tasks so far, so the
    earlier tasks get `n_earlier / (n_new + n_earlier)` of them (the new tasks get the remainder).
    """
    if replay_fraction == BALANCED:
        return task_rows // (n_new + n_earlier) * n_earlier
    return int(task_rows * float(replay_fraction) + 0.5)


def group_plan(spec: PipelineSpec, groups: list[list[str]], method: str) -> list[dict[str, Any]]:
    """Per group stage: `{"tasks": {task: n}, "safety": n, "replay": n, "total": n}`.

    Totals sum to the stage budget. From the second stage on, part of a stage's task examples come
    from the tasks of earlier groups (split evenly over them), so each stage trains on mixed-task
    data; `tasks` then also counts those replayed tasks. A float `replay_fraction` is that part's
    share; `balanced` gives every task seen so far an equal share, so the new group gets
    |group| / |tasks so far| of the stage (1/2 at the second of three one-task stages, 1/3 at the third).
    """
    per_task = split_evenly(stage_budget(spec, method), [t for g in groups for t in g])
    plan = []
    for i, g in enumerate(groups):
        total = sum(per_task[t] for t in g)
        safety = int(total * spec.safety_mix + 0.5) if uses_safety(spec, method) else 0
        safety = min(safety, total - len(g))
        earlier = [t for prev in groups[:i] for t in prev]
        replay = min(replay_examples(spec.replay_fraction, total - safety, len(g), len(earlier)),
                     total - safety - len(g)) if earlier else 0
        tasks = split_evenly(total - safety - replay, g)
        if replay > 0:
            tasks.update({t: n for t, n in split_evenly(replay, earlier).items() if n})
        plan.append({"tasks": tasks, "safety": safety, "replay": replay, "total": total})
    return plan


def stage_cost(ctx: RunContext, stages: list[str]) -> dict[str, Any]:
    """Summed measured `examples_seen` / `train_seconds` of `stages`, with the per-stage breakdown."""
    parts = {}
    for s in stages:
        train = ctx.summary(s).get("train")
        if train:
            parts[s] = {"examples_seen": int(train["examples_seen"]), "train_seconds": float(train["train_seconds"])}
    return {"examples_seen": sum(p["examples_seen"] for p in parts.values()),
            "train_seconds": sum(p["train_seconds"] for p in parts.values()), "stages": parts}
