"""Saved evaluations: a YAML recipe names the model, suites, data, judge and generation settings.

```yaml
# safe-cpift eval --config recipes/eval_toy.yaml
model: toy:aligned
suites: [refusal, overrefusal, tasks]
judge: rules
generation: {batch_size: 64, seed: 0}
out: eval_toy.json
```
Without `data` for `refusal`/`overrefusal`, the sets of `evals.defaults` are used: the tiny world's
held-out prompts for a tiny-world model, XSTest's bundled unsafe/safe prompts for every other model.
`run_eval` loads the model, runs `suites.run_suites`, and writes results atomically (with `sets`:
which harmful/benign set each safety suite used); `compare_results` reports per-suite deltas between
two models (B − A).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safe_cpift.schema import ConfigError, check_keys, did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "EvalRecipe", "load_eval_recipe", "load_model", "run_eval", "compare_results", "format_summary",
    "HIGHER_IS_BETTER",
]

TOP_KEYS = ("model", "tokenizer", "suites", "data", "metric", "judge", "generation", "lm_eval", "out", "dtype",
            "trust_remote_code", "description", "limit")
GENERATION_KEYS = ("max_new_tokens", "batch_size", "seed", "system_prompt")
LM_EVAL_KEYS = ("limit", "num_fewshot", "apply_chat_template", "batch_size", "include_path", "max_length")
DATA_SUITES = ("refusal", "overrefusal", "tasks")
HIGHER_IS_BETTER = {"refusal": True, "overrefusal": False, "tasks": True}


@dataclass
class EvalRecipe:
    """A validated eval recipe (see the module docstring for the YAML)."""

    model: str | None = None
    suites: list[str] = field(default_factory=lambda: ["refusal", "overrefusal", "tasks"])
    tokenizer: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    metric: Any = "exact_match"
    judge: str = "rules"
    generation: dict[str, Any] = field(default_factory=dict)
    lm_eval: dict[str, Any] = field(default_factory=dict)
    out: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False
    description: str = ""
    source: str | None = None
    limit: int | None = None  # prompts per safety suite / examples per task (lm-eval: `lm_eval.limit`)


def load_eval_recipe(config: str | Path | Mapping[str, Any]) -> EvalRecipe:
    """Read and validate an eval recipe; every problem is reported at once (`ConfigError`).

    Args:
        config: a YAML file path or an already-parsed mapping.
    """
    from safe_cpift.evals.suites import parse_suites

    source = None
    if not isinstance(config, Mapping):
        import yaml

        source = str(config)
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"eval recipe not found: {path}")
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError([f"not valid YAML: {err}"], source=source) from None
        except UnicodeDecodeError as err:
            raise ConfigError([f"not UTF-8 text ({err.reason} at byte {err.start + 1}); save the file as UTF-8"],
                              source=source) from None
        if not isinstance(config, Mapping):
            raise ConfigError(["the recipe must be a mapping of keys to values"], source=source)
    problems = check_keys(config, TOP_KEYS, "recipe")
    suites = config.get("suites", ["refusal", "overrefusal", "tasks"])
    try:
        suites = parse_suites(suites if isinstance(suites, (str, list)) else [])
    except ValueError as err:
        problems.append(f"`suites`: {err}")
        suites = []
    data = config.get("data") or {}
    if not isinstance(data, Mapping):
        problems.append("`data` must map suite names (refusal, overrefusal, tasks) to data specs")
        data = {}
    for key in data:
        if key not in DATA_SUITES:
            guess = did_you_mean(str(key), DATA_SUITES)
            problems.append(f"unknown key `{key}` in `data`" + (f" — did you mean `{guess}`?" if guess else "")
                            + f" (allowed: {', '.join(DATA_SUITES)})")
        elif key not in suites:
            problems.append(f"`data.{key}` is given but `{key}` is not in `suites`")
    for section, allowed in (("generation", GENERATION_KEYS), ("lm_eval", LM_EVAL_KEYS)):
        value = config.get(section) or {}
        if not isinstance(value, Mapping):
            problems.append(f"`{section}` must be a mapping (allowed keys: {', '.join(allowed)})")
        else:
            problems += check_keys(value, allowed, section)
    gen = config.get("generation") or {}
    if isinstance(gen, Mapping):
        for key in ("max_new_tokens", "batch_size"):
            v = gen.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                problems.append(f"`generation.{key}` must be a positive integer, got {v!r}")
        if gen.get("seed") is not None and (isinstance(gen["seed"], bool) or not isinstance(gen["seed"], int)):
            problems.append(f"`generation.seed` must be an integer, got {gen['seed']!r}")
    judge = config.get("judge", "rules")
    if not isinstance(judge, str) or not (judge == "rules" or judge.startswith("model:")):
        problems.append(f"`judge` must be `rules` or `model:PATH`, got {judge!r}")
    model = config.get("model")
    if model is not None and not isinstance(model, str):
        problems.append(f"`model` must be a path, hub id or toy:aligned, got {model!r}")
    metric = config.get("metric", "exact_match")
    if not isinstance(metric, (str, Mapping)):
        problems.append("`metric` must be a name (exact_match, contains, regex:<answer_pattern>, module:function) "
                        "or a mapping task -> name")
    limit = config.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"`limit` must be a positive integer (prompts per safety suite, examples per task), got {limit!r}")
    if config.get("dtype", "float32") not in ("float32", "bfloat16", "float16"):
        problems.append(f"`dtype` must be float32, bfloat16 or float16, got {config.get('dtype')!r}")
    if problems:
        raise ConfigError(problems, source=source)
    return EvalRecipe(
        model=model, suites=suites, tokenizer=config.get("tokenizer"), data=dict(data), metric=metric,
        judge=judge, generation=dict(gen), lm_eval=dict(config.get("lm_eval") or {}), out=config.get("out"),
        dtype=config.get("dtype", "float32"), trust_remote_code=bool(config.get("trust_remote_code", False)),
        description=str(config.get("description", "")), source=source, limit=limit,
    )


def resolve_model_path(spec: str) -> str:
    """`toy:aligned` / `toy:base` (the tiny world, built and cached on first use) or a path / hub id."""
    if spec.startswith("toy:"):
        which = spec[len("toy:") :]
        if which not in ("aligned", "base"):
            raise ValueError(f"`model` {spec!r}: use toy:aligned or toy:base")
        from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

        world = ToyWorld(ToyWorldConfig(seed=0))
        return str(world.aligned_model_path() if which == "aligned" else world.base_model_path())
    return spec


def load_model(spec: str, *, tokenizer: str | None = None, dtype: str = "float32", trust_remote_code: bool = False):
    """Load `(model, tokenizer)` from a local directory, a hub id or `toy:aligned`."""
    import torch

    from safe_cpift.models import load_causal_lm, load_tokenizer

    path = resolve_model_path(spec)
    model = load_causal_lm(path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code)
    tok = load_tokenizer(resolve_model_path(tokenizer) if tokenizer else path, trust_remote_code=trust_remote_code)
    return model, tok


def safety_sets(recipe: EvalRecipe, model: str) -> dict[str, dict[str, Any]]:
    """`{suite: {"source", "default", "description"}}` for the recipe's refusal/overrefusal suites:
    the recipe's `data`, else the default sets for `model` (`evals.defaults.chosen_prompt_sets`)."""
    from safe_cpift.evals.defaults import chosen_prompt_sets

    chosen = chosen_prompt_sets(model, recipe.data.get("refusal"), recipe.data.get("overrefusal"))
    pairs = (("refusal", "harmful"), ("overrefusal", "benign"))
    return {suite: chosen[kind] for suite, kind in pairs if suite in recipe.suites}


def run_eval(recipe: EvalRecipe, *, model: str | None = None, out: str | Path | None = None,
             progress: bool = True, defaults_from: str | None = None) -> dict[str, Any]:
    """Run a recipe on its model (or `model`) and write the results JSON to `out` (or `recipe.out`).

    Args:
        defaults_from (`str`, *optional*): choose the default harmful/benign sets for this model
            instead of the evaluated one (`--compare` scores both models on the sets of model A).

    Returns:
        `dict`: `model`, `suites` (full results with per-example records), `summary`, `sets` (the
        harmful/benign set of each safety suite and whether it was a default), `config`, `seconds`.
    """
    from safe_cpift.evals.suites import run_suites

    spec = model or recipe.model
    if not spec:
        raise ValueError("no model to evaluate: set `model` in the recipe or pass --model")
    start = time.perf_counter()
    sets = safety_sets(recipe, defaults_from or spec)
    data = {**recipe.data, **{suite: chosen["source"] for suite, chosen in sets.items()}}
    lm, tok = load_model(spec, tokenizer=recipe.tokenizer, dtype=recipe.dtype,
                         trust_remote_code=recipe.trust_remote_code)
    gen = {"max_new_tokens": None, "batch_size": 64, "seed": 0, "system_prompt": None, **recipe.generation}
    results = run_suites(lm, tok, recipe.suites, data=data, judge=recipe.judge, metric=recipe.metric,
                         lm_eval=recipe.lm_eval, progress=progress, limit=recipe.limit, **gen)
    results = {"model": spec, **results, "sets": _jsonable_data(sets),
               "config": {"suites": recipe.suites, "judge": recipe.judge, "generation": gen,
                          "lm_eval": recipe.lm_eval, "limit": recipe.limit, "data": _jsonable_data(data),
                          "recipe": recipe.source}, "seconds": round(time.perf_counter() - start, 2)}
    target = out or recipe.out
    if target:
        write_results(target, results)
    return results


def _jsonable_data(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), dict, list)) else str(v)) for k, v in data.items()}


def write_results(path: str | Path, results: Mapping[str, Any]) -> Path:
    """Write results JSON atomically (temp file + rename)."""
    from safe_cpift.io import atomic_write_json

    atomic_write_json(path, results)
    logger.info("wrote %s", path)
    return Path(path)


def higher_is_better(suite: str, result: Mapping[str, Any] | None = None) -> bool:
    """Direction of a suite's headline number (`overrefusal` and lm-eval error metrics: lower)."""
    if suite in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[suite]
    metric = (result or {}).get("metric") or ""
    return not any(w in str(metric) for w in ("over_refusal", "perplexity", "bits_per_byte", "error", "loss"))


def compare_results(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Per-suite deltas B − A: what fine-tuning (A → B) gained and what it cost.

    Returns:
        `dict`: `{suite: {"a", "b", "delta", "higher_is_better", "verdict"}}` with verdict
        `gained`, `cost` or `same`, plus `models` ({"a", "b"}).
    """
    out: dict[str, Any] = {"models": {"a": a.get("model"), "b": b.get("model")}, "suites": {}}
    for suite, va in a.get("summary", {}).items():
        vb = b.get("summary", {}).get(suite)
        if va is None or vb is None:
            continue
        hib = higher_is_better(suite, a.get("suites", {}).get(suite))
        delta = vb - va
        better = delta > 0 if hib else delta < 0
        verdict = "same" if abs(delta) < 1e-12 else ("gained" if better else "cost")
        out["suites"][suite] = {"a": va, "b": vb, "delta": delta, "higher_is_better": hib, "verdict": verdict}
    return out


def format_summary(results: Mapping[str, Any]) -> str:
    """Human-readable lines: one per suite with its headline number and example count; for the safety
    suites, the set used and the rate per prompt type (XSTest's `type`, the tiny world's category)."""
    lines = [f"model: {results.get('model')}"]
    categories = [c for res in results.get("suites", {}).values() for c in (res.get("by_category") or {})]
    width = max([28, *(len(s) + 2 for s in results.get("summary", {})), *(len(c) + 4 for c in categories)])
    sets = results.get("sets") or {}
    for suite, value in results.get("summary", {}).items():
        res = results.get("suites", {}).get(suite, {})
        label = {"refusal": "refusal rate", "overrefusal": "over-refusal rate", "tasks": "task mean"}.get(
            suite, res.get("metric") or "score")
        shown = "n/a" if value is None else f"{value:.3f}"
        lines.append(f"  {suite:<{width}} {label:<20} {shown}  (n={res.get('n', '?')})")
        if suite in sets:
            chosen = sets[suite]
            lines.append(f"    set: {chosen['source']}" + (" (default)" if chosen.get("default") else "")
                         + (f" — {chosen['description']}" if chosen.get("description") != chosen["source"] else ""))
        counts = res.get("n_by_category") or {}
        for category, rate in (res.get("by_category") or {}).items():
            lines.append(f"    {category:<{width - 2}} {rate:.3f}  (n={counts.get(category, '?')})")
        for task, score in (res.get("scores") or {}).items():
            lines.append(f"    {task:<{width - 2}} {score:.3f}")
    return "\n".join(lines)
