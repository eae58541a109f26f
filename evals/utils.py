"""Dataset builders and scorers for safe-cpift's lm-eval tasks (`--include_path evals`).

Needs the `safe_cpift` package installed (it supplies the tiny world's data and the refusal judge).
Task metadata (`--metadata '{"seed": 1}'`) reaches the dataset builders as keyword arguments.
"""

from __future__ import annotations

import os
from typing import Any

import datasets


def _dataset(rows: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _world(kwargs: dict[str, Any]):
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    return ToyWorld(ToyWorldConfig(seed=int(kwargs.get("seed", 0))))


def toy_harmful(**kwargs: Any) -> datasets.DatasetDict:
    """The tiny world's held-out harmful prompts."""
    harmful, _ = _world(kwargs).safety_rows("test")
    return _dataset([{"prompt": r["prompt"], "category": r["category"]} for r in harmful])


def toy_benign(**kwargs: Any) -> datasets.DatasetDict:
    """The tiny world's held-out benign look-alikes."""
    _, benign = _world(kwargs).safety_rows("test")
    return _dataset([{"prompt": r["prompt"], "category": r["category"]} for r in benign])


def toy_tasks(**kwargs: Any) -> datasets.DatasetDict:
    """The tiny world's held-out task tests, all tasks in one split (column `task`)."""
    world = _world(kwargs)
    rows = [{"prompt": r["prompt"], "reference": r["response"], "task": name}
            for name in world.task_names for r in world.task_rows(name, "test")]
    return _dataset(rows)


def toy_general(**kwargs: Any) -> datasets.DatasetDict:
    """The tiny world's held-out knowledge questions, each with its answer and three distractors.

    Distractors are other questions' answers, chosen deterministically (the answer's position among
    the four choices rotates so that position carries no signal).
    """
    rows = list(_world(kwargs).general_qa())
    answers = sorted({r["answer"] for r in rows})
    out = []
    for i, r in enumerate(rows):
        others = [a for a in answers if a != r["answer"]]
        distractors = [others[(i * 7 + k * 11) % len(others)] for k in range(3)]
        distractors = list(dict.fromkeys(distractors))
        k = 1
        while len(distractors) < 3:  # collisions: take the next unused answers
            candidate = others[(i + k) % len(others)]
            if candidate not in distractors:
                distractors.append(candidate)
            k += 1
        gold = i % 4
        choices = distractors[:gold] + [r["answer"]] + distractors[gold:]
        out.append({"question": r["question"], "choices": choices, "gold": gold})
    return _dataset(out)


def toy_safety_choice(**kwargs: Any) -> datasets.DatasetDict:
    """Harmful and benign held-out prompts with two continuations: a refusal (0) and a helpful answer (1),
    in the phrasings the tiny world aligns on (the prompts are held out; the probe asks whether the
    prompt, not the phrasing, decides which continuation the model prefers).

    The gold answer is the refusal for harmful prompts and the helpful answer for benign ones, so
    accuracy rewards a model that prefers refusing only what it should (scored by log-likelihood).
    """
    from safe_cpift.toyworld.safety import HELPFUL_TRAIN, REFUSALS_TRAIN

    harmful, benign = _world(kwargs).safety_rows("test")
    # interleaved (harmful, benign, harmful, ...) so that any `--limit` covers both kinds
    pairs = [(r, 0) for r in harmful]
    pairs = [p for h, b in zip(pairs, [(r, 1) for r in benign], strict=False) for p in (h, b)] + pairs[len(benign):]
    rows = []
    for i, (r, gold) in enumerate(pairs):
        action = r.get("action", "")
        refusal = REFUSALS_TRAIN[i % len(REFUSALS_TRAIN)].format(action=action)
        helpful = HELPFUL_TRAIN[i % len(HELPFUL_TRAIN)].format(action=action)
        rows.append({"prompt": r["prompt"], "choices": [refusal, helpful], "gold": gold})
    return _dataset(rows)


def _xstest(label: str, kwargs: dict[str, Any]) -> datasets.DatasetDict:
    from safe_cpift.evals.public_sets import load_public_set

    path = kwargs.get("xstest_path") or os.environ.get("SAFE_CPIFT_XSTEST")
    rows = load_public_set("xstest", path=path, expected="compliance" if label == "safe" else "refusal")
    return _dataset([{"prompt": r["prompt"], "category": r["category"]} for r in rows])


def xstest_safe(**kwargs: Any) -> datasets.DatasetDict:
    """XSTest's 250 safe prompts (over-refusal). Local copy: `$SAFE_CPIFT_XSTEST` or metadata `xstest_path`."""
    return _xstest("safe", kwargs)


def xstest_unsafe(**kwargs: Any) -> datasets.DatasetDict:
    """XSTest's 200 unsafe contrast prompts (refusal)."""
    return _xstest("unsafe", kwargs)


def _refused(results: list[str]) -> float:
    from safe_cpift.evals.judge import is_refusal

    return float(is_refusal(results[0] if results else ""))


def process_refusal(doc: dict, results: list[str]) -> dict[str, float]:
    """`refusal_rate`: 1 when the reply is a refusal (the project's offline judge)."""
    return {"refusal_rate": _refused(results)}


def process_overrefusal(doc: dict, results: list[str]) -> dict[str, float]:
    """`over_refusal_rate`: 1 when the reply to a benign prompt is a refusal."""
    return {"over_refusal_rate": _refused(results)}


def process_exact(doc: dict, results: list[str]) -> dict[str, float]:
    """`exact_match` after stripping whitespace: `safe_cpift.evals.metrics.exact_match`, as `run` and `eval` score."""
    from safe_cpift.evals.metrics import exact_match

    return {"exact_match": exact_match(results[0] if results else "", doc["reference"])}
