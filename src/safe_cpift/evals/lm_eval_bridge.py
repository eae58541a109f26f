"""Run lm-evaluation-harness tasks on an in-memory model (capability retention through lm-eval).

Our own task YAMLs live in the repository's top-level `evals/` folder (found automatically from a
source checkout, or via `$SAFE_CPIFT_EVALS_PATH`); any task lm-eval knows can be named too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["run_lm_eval", "default_include_path", "EVALS_PATH_VARIABLE"]

EVALS_PATH_VARIABLE = "SAFE_CPIFT_EVALS_PATH"
_MANAGERS: dict[tuple[str, ...], Any] = {}


def default_include_path() -> str | None:
    """`$SAFE_CPIFT_EVALS_PATH`, else the checkout's top-level `evals/` folder when present."""
    env = os.environ.get(EVALS_PATH_VARIABLE)
    if env:
        return env
    candidate = Path(__file__).resolve().parents[3] / "evals"
    return str(candidate) if candidate.is_dir() and any(candidate.glob("*.yaml")) else None


def _jsonable(x: Any) -> Any:
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item"):
        try:
            return x.item()
        except (ValueError, TypeError):
            pass
    return str(x)


def _primary(metrics: dict[str, Any]) -> tuple[str | None, float | None]:
    for key, value in metrics.items():
        if "," not in key or "stderr" in key or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        return key, float(value)
    return None, None


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    include_path: str | Sequence[str] | None = None,
    apply_chat_template: bool = False,
    batch_size: int = 8,
    device: str = "cpu",
    seed: int = 0,
    max_length: int | None = None,
    log_samples: bool = True,
) -> dict[str, Any]:
    """Evaluate an in-memory model on lm-eval tasks with `simple_evaluate` (no bootstrap).

    Args:
        model (`PreTrainedModel`): the model (not a path: the fine-tuned weights in memory are used).
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer.
        tasks (`Sequence[str]`): lm-eval task or group names (ours: see `evals/README.md`).
        limit (`int` or `float`, *optional*): examples per task (or a fraction).
        num_fewshot (`int`, *optional*): few-shot examples.
        include_path (`str` or list, *optional*): extra task folders; our `evals/` is always added
            when found (`default_include_path`).
        apply_chat_template (`bool`, *optional*, defaults to `False`): wrap prompts in the chat template.
        batch_size (`int`, *optional*, defaults to `8`): HFLM batch size.
        device (`str`, *optional*, defaults to `"cpu"`).
        seed (`int`, *optional*, defaults to `0`): random, numpy, torch and few-shot seeds.
        max_length (`int`, *optional*): context length for HFLM (defaults to the model's).
        log_samples (`bool`, *optional*, defaults to `True`): keep per-example records.

    Returns:
        `dict`: `tasks` ({task: {"suite", "metrics", "metric", "score", "n", "records"}}), `config`.
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:  # pragma: no cover - lm-eval is a dependency
        raise ImportError("the lm-eval suites need lm-eval: pip install 'lm-eval>=0.4.8'") from err

    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise ValueError("`tasks` is empty; name at least one lm-eval task")
    paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
    ours = default_include_path()
    if ours and ours not in paths:
        paths.append(ours)
    key = tuple(paths)
    if key not in _MANAGERS:  # indexing every task YAML takes seconds; do it once per process
        _MANAGERS[key] = TaskManager(include_path=paths or None)
    manager = _MANAGERS[key]
    known = set(manager.all_tasks)
    missing = [t for t in tasks if t not in known]
    if missing:
        from safe_cpift.schema import did_you_mean

        ours_names = sorted(n for n in known if n.startswith("safe_cpift"))
        msgs = []
        for t in missing:
            guess = did_you_mean(t, known)
            msgs.append(f"`{t}`" + (f" (did you mean `{guess}`?)" if guess else ""))
        raise ValueError(f"unknown lm-eval task {', '.join(msgs)}; ours: {', '.join(ours_names) or 'none found'}; "
                         "list all with `lm-eval ls tasks`")
    hf_kwargs: dict[str, Any] = {"pretrained": model, "tokenizer": tokenizer, "device": device, "batch_size": batch_size}
    if max_length is not None:
        hf_kwargs["max_length"] = max_length
    lm = HFLM(**hf_kwargs)
    logger.info("lm-eval: %s (limit=%s, fewshot=%s)", ", ".join(tasks), limit, num_fewshot)
    out = simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager, bootstrap_iters=0,
        apply_chat_template=apply_chat_template, log_samples=log_samples, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    if out is None:  # non-zero rank in distributed runs
        return {"tasks": {}, "config": {}}
    results = out.get("results", {})
    samples = out.get("samples", {}) if log_samples else {}
    by_task: dict[str, Any] = {}
    for task in tasks:
        metrics = {k: v for k, v in results.get(task, {}).items() if "," in k}
        metric, score = _primary(metrics)
        records = [
            {"doc_id": s.get("doc_id"), "target": _jsonable(s.get("target")),
             "response": _jsonable(s.get("filtered_resps")),
             **{m: _jsonable(s.get(m)) for m in s.get("metrics", []) if m in s}}
            for s in samples.get(task, [])
        ]
        n = out.get("n-samples", {}).get(task, {}).get("effective", len(records))
        by_task[task] = {"suite": f"lm-eval:{task}", "metrics": _jsonable(metrics), "metric": metric,
                         "score": score, "n": n, "records": records}
        # groups report their subtasks separately; keep them
        for sub, sub_metrics in results.items():
            if sub != task and sub not in tasks and sub in samples:
                by_task[task].setdefault("subtasks", {})[sub] = _jsonable(sub_metrics)
    config = {"limit": limit, "num_fewshot": num_fewshot, "apply_chat_template": apply_chat_template,
              "include_path": paths, "lm_eval_version": _version()}
    return {"tasks": by_task, "config": config}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lm-eval")
    except Exception:  # pragma: no cover
        return "unknown"
