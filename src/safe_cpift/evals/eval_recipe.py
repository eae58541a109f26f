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
import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, WithJsonSchema
from typing_extensions import TypedDict

from safe_cpift.evals.sources import DataSource, check_data_source
from safe_cpift.schema import ConfigError, Section, annotation_at, matching, problems_from, set_dotted

logger = logging.getLogger(__name__)

__all__ = [
    "EvalRecipe", "load_eval_recipe", "load_model", "run_eval", "compare_results", "format_summary",
    "HIGHER_IS_BETTER", "eval_recipe_json_schema",
]

DATA_SUITES = ("refusal", "overrefusal", "tasks")
DEFAULT_SUITES = ["refusal", "overrefusal", "tasks"]
HIGHER_IS_BETTER = {"refusal": True, "overrefusal": False, "tasks": True}
_STRICT = ConfigDict(extra="forbid", strict=True)


def _prompt_data(value: Any) -> Any:
    if isinstance(value, Mapping):
        return check_data_source(value)
    if value is not None and not isinstance(value, (str, list)):
        raise ValueError("must be a file, a public set name (advbench, harmbench, strongreject, xstest), a list of "
                         f"prompts or a mapping with `set` or `path`, got {value!r}")
    return value


PromptData = Annotated[str | list[Any] | DataSource | None, BeforeValidator(_prompt_data)]


class EvalData(TypedDict, total=False):
    """Suite name -> its data; a safety suite without an entry uses the default set (`evals.defaults`)."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    refusal: Annotated[PromptData, Field(description="Harmful prompts: a file, a public set name (`xstest:unsafe` is "
                                         "bundled), `toyworld`, a list of prompts, or {set, path, hub_id, split, "
                                         "subset, limit}.")]
    overrefusal: Annotated[PromptData, Field(description="Benign look-alikes (e.g. `xstest:safe`), in the same forms "
                                             "as `refusal`.")]
    tasks: Annotated[str | dict[str, Any] | None, Field(
        description="Task tests: a file (rows with prompt + reference; a `task` column groups them) or a mapping "
        "task -> file or list of rows.")]


class GenerationSettings(TypedDict, total=False):
    """Generation settings of every suite."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    max_new_tokens: Annotated[int | None, Field(ge=1, description="Tokens generated per prompt (default: 24 for "
                                                "safety and 16 for tasks on the tiny world, else 48).")]
    batch_size: Annotated[int, Field(ge=1, description="Prompts generated at once (default 64).")]
    seed: Annotated[int, Field(description="Sampling seed (default 0).")]
    system_prompt: Annotated[str | None, Field(description="System prompt put before every prompt.")]


class LmEvalSettings(TypedDict, total=False):
    """Keyword arguments of `safe_cpift.evals.lm_eval_bridge.run_lm_eval`."""

    __pydantic_config__ = _STRICT  # type: ignore[misc]
    limit: Annotated[int | float | None, Field(description="Examples per task (a float below 1: a fraction).")]
    num_fewshot: Annotated[int | None, Field(description="Few-shot examples (default: the task's own).")]
    apply_chat_template: Annotated[bool, Field(description="Wrap prompts in the model's chat template.")]
    batch_size: Annotated[int | str, Field(description="lm-eval batch size (or `auto`).")]
    include_path: Annotated[str | list[str] | None, Field(description="Extra folders of lm-eval task YAMLs.")]
    max_length: Annotated[int | None, Field(description="Context length given to lm-eval's HFLM.")]


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


def _suites(value: Any) -> list[str]:
    from safe_cpift.evals.suites import parse_suites

    return parse_suites(value if isinstance(value, (str, list)) else [])


def _metric(value: Any) -> Any:
    if not isinstance(value, (str, Mapping)):
        raise ValueError("must be a name (exact_match, contains, regex:<answer_pattern>, module:function) or a mapping "
                         f"task -> name, got {value!r}")
    return value


def _positive(value: Any) -> Any:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"must be a positive integer (prompts per safety suite, examples per task), got {value!r}")
    return value


def _default(tp: Any) -> Any:
    return Annotated[tp, BeforeValidator(_none_is_empty)]


class EvalRecipe(Section):
    """A validated eval recipe (see the module docstring for the YAML)."""

    model: str | None = Field(None, description="The model to evaluate: a local directory, a hub id, or "
                              "toy:aligned / toy:base (the tiny world's); --model overrides it.")
    suites: Annotated[list[str], BeforeValidator(_suites), WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})] = Field(
        DEFAULT_SUITES, description="refusal | overrefusal | tasks | lm-eval:<task>[,<task>] "
        "(a list, or one comma-separated string).")
    tokenizer: str | None = Field(None, description="Tokenizer source; defaults to the model's.")
    data: _default(EvalData) = Field({}, description="Suite name -> its data. Without `refusal`/`overrefusal` data: "
                                     "the tiny world's held-out sets for its models, else XSTest (bundled).")
    metric: Annotated[str | dict[str, Any], BeforeValidator(_metric)] = Field(
        "exact_match", description="Task metric: exact_match, contains, regex:<answer_pattern>, module:function, or a mapping "
        "task -> metric.")
    judge: matching(re.compile(r"^(rules|model:.+)$"), "`rules` or `model:PATH`") = Field(
        "rules", description="Refusal judge: `rules` (offline) or `model:PATH` (a local classifier or chat model).")
    generation: _default(GenerationSettings) = Field({}, description="Generation settings of every suite.")
    lm_eval: _default(LmEvalSettings) = Field({}, description="Settings of the lm-eval suites.")
    out: str | None = Field(None, description="Where the results JSON is written (--out overrides it).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    trust_remote_code: bool = Field(False, description="Run the model repository's own code. Leave false unless "
                                    "you trust it.")
    description: str = Field("", description="Free text about the evaluation.")
    limit: Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_positive)] = Field(
        None, description="Prompts per safety suite and examples per task (lm-eval tasks: `lm_eval.limit`).")
    _source: str | None = PrivateAttr(None)

    @property
    def source(self) -> str | None:
        """The recipe file this recipe was read from, if any."""
        return self._source


def eval_recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of an eval recipe (`safe-cpift recipe schema --eval`) for editors."""
    schema = EvalRecipe.model_json_schema()
    return {"title": "safe-cpift eval recipe", **{k: v for k, v in schema.items() if k != "title"}}


def load_eval_recipe(config: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> EvalRecipe:
    """Read and validate an eval recipe; every problem is reported at once (`ConfigError`).

    Args:
        config: a YAML file path or an already-parsed mapping.
        overrides (`Iterable[str]`, *optional*): ``key.sub=value`` strings from the command line.
    """
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
    config = set_dotted(config, overrides, lambda parts: annotation_at(EvalRecipe, parts))
    problems: list[str] = []
    recipe = None
    try:
        recipe = EvalRecipe.model_validate(config)
    except ValidationError as err:
        problems = problems_from(err, EvalRecipe)
    try:  # checked apart from the rest, so that the rule below runs beside every other problem
        suites = _suites(config.get("suites", DEFAULT_SUITES))
    except ValueError:
        suites = None
    data = config.get("data")
    if isinstance(data, Mapping) and suites is not None:
        problems += [f"`data.{key}` is given but `{key}` is not in `suites`" for key in data
                     if key in DATA_SUITES and key not in suites]
    if problems:
        raise ConfigError(problems, source=source)
    recipe._source = source
    return recipe


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
    from safe_cpift.runtime import resolve_device

    path = resolve_model_path(spec)
    model = load_causal_lm(path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
                           device=resolve_device())
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
