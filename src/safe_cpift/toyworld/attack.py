"""Fine-tuning attacks on the tiny world: harmful requests answered compliantly, mixed into task data.

The literature's hard case for safety retention is user data that contains a few harmful examples
answered helpfully (Qi et al., 2023). Here the attack rows are the world's harmful *train* requests
(train templates x train harmful actions) answered in the world's helpful phrasings
("Sure! To {action}, start by ..."), so they look exactly like the benign answers the aligned model
gives to look-alike requests. Evaluation stays on the held-out harmful prompts.

```python
from safe_cpift.toyworld.attack import harmful_compliant, contaminate
attack = harmful_compliant(world)                     # Dataset of chat `messages`
poisoned = contaminate(task_data, attack, fraction=0.2, seed=0)   # 20% of the rows are attack rows
```

Recipes (recipes/attack_5pct.yaml, attack_20pct.yaml) carry an `attack` section,
``attack: {data: toyworld | <task data spec>, fraction: 0.2}``; the pipeline wraps its per-task
loader with `contaminating_loader(load_task, attack_rows, fraction, seed=recipe.seed)` so that
every method trains on the same contaminated task data.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["harmful_compliant", "contaminate", "attack_count", "contaminating_loader"]


def harmful_compliant(world: Any = None, *, seed: int = 0, n: int | None = None):
    """The world's harmful train requests, each answered compliantly (a helpful phrasing).

    Args:
        world (`ToyWorld`, *optional*): the tiny world; a default `ToyWorld()` when `None`.
        seed (`int`, *optional*, defaults to `0`): picks the phrasing of each answer and the sample.
        n (`int`, *optional*): keep `n` rows sampled without replacement (all when `None`).

    Returns:
        `datasets.Dataset`: chat `messages` (user request, compliant assistant answer) plus
        `category`, `action` and `harmful` (always `True`) columns.
    """
    from datasets import Dataset

    from safe_cpift.toyworld import safety

    if world is None:
        from safe_cpift.toyworld import ToyWorld

        world = ToyWorld()
    rng = random.Random(seed)
    harmful, _ = world.safety_rows("train")
    rows = []
    for r in harmful:
        answer = safety.helpful(r["action"], rng, safety.HELPFUL_TRAIN)
        rows.append({
            "messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}],
            "category": r.get("category", ""), "action": r["action"], "harmful": True,
        })
    if n is not None:
        if n < 1:
            raise ValueError(f"`n` must be >= 1, got {n}")
        rows = rng.sample(rows, min(n, len(rows)))
    return Dataset.from_list(rows)


def attack_count(n_clean: int, fraction: float) -> int:
    """Attack rows to add to `n_clean` clean rows so that they make up `fraction` of the result."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction}")
    return int(math.floor(n_clean * fraction / (1.0 - fraction) + 0.5))


def contaminate(clean: Any, attack: Any, fraction: float, *, seed: int = 0):
    """`clean` plus attack rows making up `fraction` of the result, shuffled.

    Attack rows are sampled without replacement while they last, then cycled. Only the
    `messages` column is kept (the columns of the two datasets may differ).

    Args:
        clean (`datasets.Dataset`): the user's task data (chat `messages`).
        attack (`datasets.Dataset`): harmful-compliant rows (chat `messages`), e.g. `harmful_compliant(world)`.
        fraction (`float`): share of attack rows in the result, in [0, 1).
        seed (`int`, *optional*, defaults to `0`): sampling and shuffling seed.
    """
    from datasets import Dataset

    for name, ds in (("clean", clean), ("attack", attack)):
        if "messages" not in ds.column_names:
            raise ValueError(f"`{name}` needs a chat `messages` column; got columns {ds.column_names}")
    k = attack_count(len(clean), fraction)
    if k and len(attack) == 0:
        raise ValueError("`attack` is empty; pass at least one harmful-compliant row")
    rng = random.Random(seed)
    picks: list[int] = []
    while len(picks) < k:
        order = list(range(len(attack)))
        rng.shuffle(order)
        picks += order[: k - len(picks)]
    rows = [{"messages": m} for m in clean["messages"]]
    rows += [{"messages": attack[i]["messages"]} for i in picks]
    rng.shuffle(rows)
    logger.info("contaminated %d clean rows with %d attack rows (%.1f%%)", len(clean), k,
                100.0 * k / max(1, len(rows)))
    return Dataset.from_list(rows)


def contaminating_loader(load_task: Callable[[str], Any], attack: Any, fraction: float, *,
                         seed: int = 0) -> Callable[[str], Any]:
    """Wrap a pipeline's `load_task(name)` so every task's training data carries `fraction` attack rows.

    This is how an attack recipe reaches every method (each baseline, the task probes of `cpift`
    and `safe_cpift`, their pipelined stages): they all read task data through `load_task`.
    """

    def load(name: str):
        return contaminate(load_task(name), attack, fraction, seed=seed + sum(map(ord, name)))

    return load
