"""Run recipes: a YAML file validated against pydantic models whose fields carry help text.

```python
recipe = load_recipe("recipes/toy.yaml", overrides=["cpift.top_p=0.02", "seed=1"])
recipe.cpift.top_p, recipe.tasks[0].name, recipe.to_dict()
```
Unknown keys are errors with a did-you-mean, and every problem of a recipe is reported at once in
one `ConfigError`. `training` is passed to TRL's `SFTConfig`; its keys are checked against
`SFTConfig`'s fields. The built-in tiny world is named `toyworld` wherever a model, dataset or task
list is expected (`model: {source: toyworld}`, `tasks: toyworld`). `Recipe.model_json_schema()` is
the JSON Schema editors use (`safe-cpift recipe schema`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PydanticUserError,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from safe_cpift.data import FORMAT_ALIASES, FORMATS, LOCAL_SUFFIXES
from safe_cpift.pipeline.spec import (  # PEER_BASELINES: opt-in
    ALL_METHODS,
    BASELINES,
    METHODS,
    PEER_BASELINES,
    SINGLE_TASK_BUDGETS,
)
from safe_cpift.schema import (
    ConfigError,
    Number,
    Section,
    annotation_at,
    did_you_mean,
    draft,
    matching,
    number,
    problem,
    problems_from,
    set_dotted,
)

__all__ = [
    "TOYWORLD", "METHODS", "BASELINES", "SUITES", "Recipe", "ModelConfig", "DataSpec", "PromptSpec",
    "CoreConfig", "SafetyConfig", "TaskSpec", "ProbeLoraConfig", "CpiftConfig", "BudgetConfig", "EvalConfig",
    "ToyWorldSettings", "AttackConfig", "ProtectConfig", "load_recipe", "recipe_from_dict", "apply_overrides", "find_recipe",
    "sft_config_fields", "build_metric", "expand_toyworld_tasks", "resolve_paths", "recipe_json_schema",
]

TOYWORLD = "toyworld"
PROTECTIONS = ("freeze", "safety_mix", "direction", "projection", "token_kl", "repair")
SUITES = ("tasks", "refusal", "overrefusal")
DTYPES = ("float32", "bfloat16", "float16", "auto")
SCOPES = ("global", "tensor", "layer")
METRIC_RE = re.compile(r"^(exact|contains|regex|python:[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# set by the pipeline per stage / by the recipe's top level, so they may not appear in `training`
PIPELINE_OWNED = {
    "output_dir": "the run directory is `output_dir` at the recipe's top level (or --output-dir)",
    "max_steps": "steps follow from `budget.examples_per_method` and the batch size",
    "num_train_epochs": "steps follow from `budget.examples_per_method` and the batch size",
    "seed": "use the top-level `seed`",
    "data_seed": "use the top-level `seed`",
}

Fraction = number(gt=0.0, le=1.0)
Share = number(ge=0.0, lt=1.0)
Unit = number(ge=0.0, le=1.0)
Count = Annotated[int, Field(ge=1)]
BALANCED = "balanced"


def _replay_share(value: Any) -> float | str:
    if value == BALANCED:
        return value
    try:
        share = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        share = None
    if share is None or not 0 <= share < 1:
        raise ValueError(f"must be a number in [0, 1) or `{BALANCED}` (an equal share for every task so far), "
                         f"got {value!r}")
    return share


ReplayShare = Annotated[float | str, BeforeValidator(_replay_share), WithJsonSchema(
    {"anyOf": [{"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}, {"const": BALANCED}]})]
Format = Literal[FORMATS + tuple(FORMAT_ALIASES)]


def _is_local(source: str) -> bool:
    return Path(source).suffix.lower() in LOCAL_SUFFIXES or Path(source).expanduser().exists()


def _valid_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"is not a valid regex: {err}") from None
    return value


def _suite(value: str) -> str:
    if value not in SUITES and not value.startswith("lm-eval:"):
        guess = did_you_mean(value, SUITES)
        raise ValueError(f"must be one of {', '.join(SUITES)} or lm-eval:<task>, got {value!r}"
                         + (f" — did you mean `{guess}`?" if guess else ""))
    return value


TaskName = matching(NAME_RE, "letters, digits and `_.-`")
Metric = matching(METRIC_RE, "exact, contains, regex or python:module:function", ("exact", "contains", "regex"))
Suite = Annotated[str, AfterValidator(_suite), WithJsonSchema(
    {"anyOf": [{"enum": list(SUITES)}, {"type": "string", "pattern": "^lm-eval:.+"}]})]


class ModelConfig(Section):
    shorthand = "source"
    source: str = Field(description="The aligned model: a local save_pretrained directory, a hub id, or `toyworld`.")
    base: str | None = Field(None, description="The model before alignment (needed for `safety.core.scorer: alignment`).")
    tokenizer: str | None = Field(None, description="Tokenizer source; defaults to `source`.")
    dtype: Literal[DTYPES] = Field("float32", description="Dtype for eval and the final model (`auto`: the checkpoint's "
                                   "own); training weights follow `precision` (docs/dtypes.md).")
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16-sr"] = Field(
        "auto", description="Training precision: fp32 | bf16-mixed (float32 master weights + bf16 autocast) | bf16-sr "
        "(bf16 weights, torchao AdamW with stochastic rounding) | auto (bf16-mixed when `training.bf16` is true, else "
        "fp32).")
    trust_remote_code: bool = Field(False, description="Run the model repository's own code. Leave false unless you trust it.")


class DataSpec(Section):
    shorthand = "source"
    source: str = Field(description="A .jsonl/.json/.csv/.parquet file, a hub dataset id, or `toyworld`.")
    format: Format = Field("auto", description="messages | prompt_completion | alpaca | auto.")
    split: str = Field("train", description="Hub split (a local file is one split).")
    subset: str | None = Field(None, description="Hub config name, e.g. `main` for openai/gsm8k.")
    columns: dict[str, str] | None = Field(None, description="Canonical column -> column in the data, e.g. {prompt: question}.")
    limit: Count | None = Field(None, description="Use only the first `limit` rows.")


class PromptSpec(Section):
    shorthand = "source"
    source: str = Field(description="Prompts to evaluate: a file, a hub id, `toyworld` (its held-out prompts), or "
                        "`xstest:unsafe` / `xstest:safe` (XSTest, shipped with safe-cpift).")
    split: str = Field("test", description="Hub split.")
    subset: str | None = Field(None, description="Hub config name.")
    column: str = Field("prompt", description="Column holding the prompt (a `messages` column also works).")
    where: dict[str, Any] | None = Field(None, description="Keep rows whose columns equal these values, e.g. {label: safe}.")
    limit: Count | None = Field(None, description="Evaluate at most this many prompts.")


class CoreConfig(Section):
    scorer: Literal["update", "alignment", "importance"] = Field(
        "update", description="update: |θ_tuned-θ_0| after a short safety SFT; alignment: |θ_aligned-θ_base|; "
        "importance: |θ·∇L| on the safety data.")
    scope: Literal[SCOPES] = Field("global", description="global: one threshold over all scalars; tensor: top_p per "
                                   "tensor; layer: whole layers.")
    top_p: Fraction = Field(0.01, description="Fraction of scalar entries in the safety core.")
    probe_examples: Count = Field(256, description="Training examples (one epoch) of the short safety SFT whose "
                                  "update defines the core (`update` scorer).")
    protect_source: Literal["aligned", "safety_probe"] = Field(
        "aligned", description="Values the frozen core keeps: `aligned` (θ0's) or `safety_probe` (those after the "
        "short safety SFT; needs scorer `update`).")


class SafetyConfig(Section):
    data: DataSpec = Field(description="Safety training data (refusals + benign look-alikes), or `toyworld`.")
    core: CoreConfig = Field(default_factory=CoreConfig, description="How the safety core is found.")
    mix_fraction: Share = Field(0.05, description="Share of safety examples mixed into user SFT (safety_mix_sft, "
                                "safe_cpift).")


class TaskSpec(Section):
    name: TaskName = Field(
        description="Task name (letters, digits, `_.-`); with `source: toyworld`, a task of the tiny world.")
    source: str = Field(description="Training data: a file, a hub id, or `toyworld`.")
    format: Format = Field("auto", description="messages | prompt_completion | alpaca | auto.")
    split: str = Field("train", description="Hub split for training.")
    subset: str | None = Field(None, description="Hub config name.")
    columns: dict[str, str] | None = Field(None, description="Canonical column -> column in the data.")
    limit: Count | None = Field(None, description="Use only the first `limit` training rows.")
    test_source: str | None = Field(None, description="Test data; defaults to `source` (required for a local file).")
    test_split: str = Field("test", description="Hub split for testing.")
    test_subset: str | None = Field(None, description="Hub config of the test data; defaults to `subset`.")
    test_limit: Count | None = Field(None, description="Evaluate on at most this many test rows.")
    metric: Metric = Field(
        "exact", description="exact | contains | regex | python:module:function(response, reference) -> float.")
    answer_pattern: Annotated[str, AfterValidator(_valid_regex)] | None = Field(
        None, description="For `metric: regex`: the answer is group 1 (or the match) in both texts.")


class ProbeLoraConfig(Section):
    rank: Count = Field(8, description="LoRA rank of each task probe's adapters.")
    alpha: number(gt=0.0) = Field(32.0, description="LoRA alpha (the update is scaled by alpha / rank).")
    target_modules: str | list[str] = Field("all-linear", description="The layers that get adapters (peft's "
                                            "`target_modules`).")
    learning_rate: number(gt=0.0) | None = Field(None, description="Learning rate of the probes' adapters; default "
                                                 "10 × `training.learning_rate`.")


class CpiftConfig(Section):
    top_p: Fraction = Field(0.01, description="Fraction of entries in each task core.")
    scope: Literal[SCOPES] = Field("global", description="Scope of task cores.")
    scorer: Literal["update", "importance"] = Field("update", description="Task core scorer.")
    tau: Unit = Field(0.1, description="Core-overlap threshold: tasks whose cores overlap more share a group.")
    slerp_t: Unit = Field(0.5, description="SLERP interpolation factor for non-core parameters.")
    slerp_weights: dict[str, number(ge=0.0, allow_inf_nan=False)] | None = Field(
        None, description="Weight of each task in the N-model SLERP of the non-core parameters, e.g. {math: 2, "
        "code: 1}; one per task, normalised to sum 1 (default: equal). Two tasks: weights (1-t, t) are "
        "slerp_t=t; not together with slerp_t.")
    probe_examples: Count = Field(256, description="Training examples (one epoch) of each task's probe SFT that "
                                  "locates its core.")
    probe_lora: ProbeLoraConfig | None = Field(
        None, description="Train each task probe as a LoRA adapter (merged into the probe model) instead of a full "
        "fine-tune: cheaper training, but a different core (docs/scaling.md measures how different). Null: full "
        "fine-tunes.")
    freeze_safety_core: bool = Field(True, description="safe_cpift: keep the safety core's entries frozen in every stage.")
    freeze_earlier_groups: bool = Field(True, description="Freeze cores of groups trained in earlier stages.")
    mix_safety: bool = Field(True, description="safe_cpift: add `safety.mix_fraction` safety examples to each stage's mix.")
    replay_fraction: ReplayShare = Field(
        "balanced", description="Share of each later stage's task examples replayed from earlier groups' tasks (the "
        "paper's mixed-task stages); `balanced` (default) gives every task seen so far an equal share of the stage (the "
        "new group gets |group| / |tasks so far|); 0 trains each stage on its group alone (docs/efficacy.md: balanced "
        "beat 0.8 for safe_cpift on every seed, on task and refusal).")
    track_stages: bool = Field(True, description="Score every task after fusion and after every pipelined stage "
                               "(report: forgetting and undertraining per stage).")


class ProtectConfig(Section):
    safe_cpift: list[Literal[PROTECTIONS]] = Field(
        ["freeze", "safety_mix", "token_kl"], description="safe_cpift's composition of protections: freeze, safety_mix, direction, "
        "projection, token_kl, repair (docs/efficacy.md).")
    direction_strength: number(ge=0.0) = Field(1.0, description="`direction`: λ of the AsFT-style penalty on updates "
                                               "orthogonal to θ_aligned − θ_base.")
    projection_every: Count = Field(4, description="`projection`: recompute the safety gradient every N steps.")
    token_kl_strength: number(ge=0.0) = Field(1.0, description="`token_kl`: β of the KL to the aligned model.")
    token_kl_first_k: Count = Field(5, description="`token_kl`: response tokens kept close to the aligned model.")
    repair_scales: list[Number] = Field([0.0, 0.25, 0.5, 1.0], description="`repair` / `resta`: safety-vector scales "
                                        "tried on the probe (the smallest that restores the aligned refusal is kept).")
    repair_margin: Unit = Field(0.05, description="`repair` / `resta`: refusal may end this far below the aligned "
                                "model's on the probe, over-refusal this far above.")
    sppft_top_p: Fraction = Field(0.25, description="`sppft` baseline: share of parameters in the frozen safety layers.")
    lora_r: Count = Field(8, description="`lora_sft` / `safe_lora`: LoRA rank.")
    lora_alpha: number(gt=0.0) = Field(32.0, description="`lora_sft` / `safe_lora`: LoRA alpha (the update is "
                                       "scaled by alpha / r).")
    lora_target_modules: str | list[str] = Field("all-linear", description="`lora_sft` / `safe_lora`: the layers "
                                                 "that get adapters (peft's `target_modules`).")
    lora_learning_rate: number(gt=0.0) | None = Field(None, description="`lora_sft` / `safe_lora`: learning rate of "
                                                      "the adapters; default 10 × `training.learning_rate`.")
    safe_lora_threshold: Unit = Field(0.5, description="`safe_lora`: τ; a LoRA layer whose update has cosine below "
                                      "this with its projection onto the alignment subspace is projected.")
    safe_lora_layers: Count | None = Field(None, description="`safe_lora`: project this many layers (those of lowest "
                                           "cosine) instead of using the threshold.")


class BudgetConfig(Section):
    examples_per_method: Count = Field(512, description="Training examples of the final fine-tuning of every method "
                                       "(equal budget); split across tasks, stages or groups by each method.")
    include_probes: bool = Field(True, description="Give each SFT baseline safe_cpift's probe examples on top, so "
                                 "every method trains on as many examples in total (false: baselines get fewer).")
    single_task: Literal[SINGLE_TASK_BUDGETS] = Field(
        "probe", description="The report's single-task reference, the seesaw check: `probe` scores the CPI-FT probe "
        "models (free, at `cpift.probe_examples` per task); `matched` trains each task alone at `multitask_sft`'s "
        "examples per task (costs one more multi-task budget, outside every method's).")


class EvalConfig(Section):
    suites: list[Suite] = Field(list(SUITES), description="tasks | refusal | overrefusal | lm-eval:<task>[,...]")
    harmful: PromptSpec | None = Field(None, description="Harmful prompts for the refusal rate: a file, a hub id, "
                                       "`toyworld`, `xstest:unsafe`. Default: `toyworld` for a toyworld model, else "
                                       "`xstest:unsafe` (bundled, offline).")
    benign: PromptSpec | None = Field(None, description="Benign look-alikes for the over-refusal rate: a file, a hub "
                                      "id, `toyworld`, `xstest:safe`. Default: `toyworld` for a toyworld model, else "
                                      "`xstest:safe` (bundled, offline).")
    task_examples: Count | None = Field(None, description="Test examples per task (default: all).")
    max_new_tokens: Count = Field(48, description="Generation length for every suite.")
    batch_size: Count = Field(64, description="Generation batch size.")


_WORLD_FIELDS_SET_ELSEWHERE = {"seed": "`toyworld.seed`", "quick": "`toyworld.quick`", "version": "`toyworld.version`",
                               "cache_dir": "the SAFE_CPIFT_CACHE environment variable",
                               "num_threads": "OMP_NUM_THREADS / torch.set_num_threads"}


def _world_settings(value: Any) -> Any:
    """`toyworld.settings`: further `ToyWorldConfig` fields, checked by name (values by ToyWorldConfig itself)."""
    from safe_cpift.toyworld.world import ToyWorldConfig

    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of ToyWorldConfig fields, got {value!r}")
    fields = sorted(f.name for f in dataclasses.fields(ToyWorldConfig) if not f.name.startswith("_"))
    for key in value:
        if key in _WORLD_FIELDS_SET_ELSEWHERE:
            raise ValueError(f"`{key}` is set by {_WORLD_FIELDS_SET_ELSEWHERE[key]}, not here")
        if key not in fields:
            guess = did_you_mean(str(key), fields)
            raise ValueError(f"unknown ToyWorldConfig field `{key}`" + (f" — did you mean `{guess}`?" if guess else "")
                             + " (safe_cpift.toyworld.ToyWorldConfig lists them)")
    try:
        ToyWorldConfig(**value)
    except (TypeError, ValueError) as err:
        raise ValueError(str(err)) from None
    return dict(value)


class ToyWorldSettings(Section):
    quick: bool = Field(False, description="Smaller, faster tiny world (the demo's --quick).")
    seed: Annotated[int, Field(ge=0)] | None = Field(None, description="World seed; defaults to the recipe's `seed`.")
    version: Literal[1, 2, 3] | None = Field(  # safe_cpift.toyworld.world.WORLD_VERSIONS
        None, description="World version: 3 (v2's data and base model, aligned deeper: 1.000 refusal, 0.006 "
        "over-refusal), 2 (sentence-answer tasks of three skills; reproduces the v2 reports) or 1 (the original "
        "letter-string world, to reproduce old reports); defaults to the library's current default.")
    settings: Annotated[dict[str, Any], AfterValidator(_world_settings)] = Field(
        default_factory=dict, description="Further `safe_cpift.toyworld.ToyWorldConfig` fields, for the lab's world "
        "variants (docs/lab.md), e.g. `{align_extra_lookalikes: 6, align_extra_harmful: 6, align_steps: 450, "
        "align_extra_templates: 10}` (variant d14, which is world v3's alignment). Empty: the version's world.")


class AttackConfig(Section):
    data: DataSpec = Field(description="Harmful requests answered compliantly: `toyworld` (the world's harmful train "
                           "requests) or a data file/hub id in any task format.")
    fraction: Share = Field(0.05, description="Share of attack rows in every task's training data (a fine-tuning attack).")


def _task_list(value: Any) -> Any:
    if value == TOYWORLD:
        return expand_toyworld_tasks({"tasks": value})["tasks"]
    if not isinstance(value, list):
        raise problem(f"`tasks` must be `toyworld` or a list of tasks, got {value!r}")
    if not value:
        raise problem("`tasks` is empty: give at least one task (or `tasks: toyworld`)")
    return value


def _tasks_schema(schema: dict[str, Any]) -> None:
    items = {key: schema.pop(key) for key in ("type", "items", "minItems") if key in schema}
    schema["anyOf"] = [{"const": TOYWORLD, "description": "every task of the built-in tiny world"}, items]


class Recipe(Section):
    model: ModelConfig = Field(description="The aligned model to fine-tune.")
    safety: SafetyConfig = Field(description="Safety data and how its core is found.")
    tasks: Annotated[list[TaskSpec], BeforeValidator(_task_list)] = Field(
        min_length=1, json_schema_extra=_tasks_schema,
        description="User tasks, or `toyworld` for every task of the tiny world.")
    cpift: CpiftConfig = Field(default_factory=CpiftConfig, description="CPI-FT settings.")
    training: dict[str, Any] = Field(
        {}, json_schema_extra={"propertyNames": {"not": {"enum": sorted(PIPELINE_OWNED)}}},
        description="Keyword arguments for trl.SFTConfig (learning_rate, per_device_train_batch_size, max_length, "
        "weight_decay, ...); " + ", ".join(sorted(PIPELINE_OWNED)) + " are set by safe-cpift.")
    baselines: list[Literal[BASELINES + PEER_BASELINES]] = Field(
        list(BASELINES), description="Baselines run beside safe_cpift; peer baselines `sppft`, `resta`, `lora_sft` and "
        "`safe_lora`, and `protected_sft` (multi-task SFT with safe_cpift's protections, no CPI-FT pipeline), run "
        "when named.")
    protect: ProtectConfig = Field(default_factory=ProtectConfig, description="safe_cpift's protections and their "
                                   "settings.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation suites and sizes.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Equal-budget comparison.")
    toyworld: ToyWorldSettings = Field(default_factory=ToyWorldSettings,
                                       description="Settings of the built-in tiny world, when used.")
    attack: AttackConfig | None = Field(None, description="Optional fine-tuning attack: contaminate every task's "
                                        "training data with harmful-compliant rows (safe_cpift.toyworld.attack).")
    seed: Annotated[int, Field(ge=0)] = Field(0, description="Seed for data order, sampling and training.")
    output_dir: str | None = Field(None, description="Run directory (overridden by --output-dir).")
    num_threads: Count | None = Field(None, description="torch CPU threads (default $SAFE_CPIFT_NUM_THREADS or 1).")
    prune_models: bool = Field(False, description="Delete each stage's model once every stage that reads it is done "
                               "(bounded disk, docs/scaling.md); results and --resume are unchanged.")
    description: str | None = Field(None, description="Free text shown in the report.")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict; `recipe_from_dict(recipe.to_dict())` gives an equal recipe."""
        return self.model_dump()

    @property
    def uses_toyworld(self) -> bool:
        """Whether any part of the recipe needs the built-in tiny world."""
        sources = [self.model.source, self.safety.data.source]
        sources += [ps.source for ps in (self.eval.harmful, self.eval.benign) if ps is not None]
        sources += [self.attack.data.source] if self.attack is not None else []
        sources += [t.source for t in self.tasks] + [t.test_source or "" for t in self.tasks]
        return TOYWORLD in sources

    @property
    def methods(self) -> list[str]:
        """Methods of this run in report order: aligned, the chosen baselines, safe_cpift."""
        return [m for m in ALL_METHODS if m in {"aligned", "safe_cpift", *self.baselines}]


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of a run recipe (what `safe-cpift recipe schema` writes) for editors."""
    schema = Recipe.model_json_schema()
    return {"title": "safe-cpift run recipe", **{k: v for k, v in schema.items() if k != "title"}}


@functools.lru_cache(maxsize=1)
def sft_config_fields() -> dict[str, Any]:
    """`trl.SFTConfig` field name -> annotated type."""
    from trl import SFTConfig

    return {f.name: f.type for f in dataclasses.fields(SFTConfig) if f.init}


@functools.cache
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(_lenient(tp), config=ConfigDict(strict=True, arbitrary_types_allowed=True))


def _lenient(tp: Any) -> Any:
    """`tp` with floats that accept YAML text (``1e-4``) and enums that accept their values."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is float:
        return Number
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return typing.Union[tp, Literal[tuple(m.value for m in tp)]]  # noqa: UP007 (built at run time)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_lenient(a) for a in args)]  # noqa: UP007
    if origin is list and args:
        return list[_lenient(args[0])]
    return tp


def _check_training(training: Any) -> tuple[dict[str, Any], list[str]]:
    """`training` checked against trl.SFTConfig's fields: (converted values, problems)."""
    if not isinstance(training, Mapping):
        return {}, [f"`training` must be a mapping of trl.SFTConfig arguments, got {training!r}"]
    fields = sft_config_fields()
    out, problems = {}, []
    for key, value in training.items():
        if key in PIPELINE_OWNED:
            problems.append(f"`training.{key}` is set by safe-cpift: {PIPELINE_OWNED[key]}")
        elif key not in fields:
            guess = did_you_mean(key, fields)
            problems.append(f"unknown key `{key}` in `training` (not a trl.SFTConfig field)"
                            + (f" — did you mean `{guess}`?" if guess else ""))
        else:
            out[key] = value
            try:
                out[key] = _adapter(fields[key]).validate_python(value)
            except PydanticUserError:  # a type pydantic cannot check: SFTConfig itself will
                pass
            except ValidationError as err:
                problems += problems_from(err, _lenient(fields[key]), f"training.{key}")
    return out, problems


def _rules(recipe: Recipe, world_tasks: tuple[str, ...] | None) -> list[str]:
    """Cross-field problems; `recipe` may be a `draft` (unvalidated values), so types are checked first."""
    problems, names = [], []
    for i, task in enumerate(recipe.tasks):
        where = f"tasks[{i}]"
        if not (isinstance(task.name, str) and isinstance(task.source, str)):
            continue
        names.append(task.name)
        if task.metric == "regex" and not task.answer_pattern:
            problems.append(f"`{where}.answer_pattern` is required with `metric: regex`")
        if task.source == TOYWORLD:
            if world_tasks is not None and task.name not in world_tasks:
                problems.append(f"`{where}.name` {task.name!r} is not a toyworld task"
                                + (f" — did you mean `{g}`?" if (g := did_you_mean(task.name, world_tasks)) else "")
                                + f" (toyworld tasks: {', '.join(world_tasks)})")
        elif task.test_source is None and _is_local(task.source):
            problems.append(f"`{where}.test_source` is required: `{where}.source` is a local file ({task.source}), "
                            "which holds one split — give the test file")
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"task name `{dup}` is used twice in `tasks`; names must be unique")
    model, core = recipe.model, recipe.safety.core
    if core.scorer == "alignment" and model.base is None and model.source != TOYWORLD:
        problems.append("`model.base` is required with `safety.core.scorer: alignment` (the model before alignment)")
    if core.protect_source == "safety_probe" and core.scorer != "update":
        problems.append("`safety.core.protect_source: safety_probe` needs `safety.core.scorer: update` "
                        "(no safety probe is trained otherwise)")
    if isinstance(recipe.baselines, list) and "safety_mix_sft" in recipe.baselines and recipe.safety.mix_fraction == 0:
        problems.append("`safety.mix_fraction` is 0, so `safety_mix_sft` would equal `multitask_sft`; set e.g. 0.05")
    problems += _slerp_weight_rules(recipe.cpift, names)
    return problems


def _slerp_weight_rules(cpift: Any, names: list[str]) -> list[str]:
    """`cpift.slerp_weights` against the task names (types and bounds are checked by the schema)."""
    weights = getattr(cpift, "slerp_weights", None)
    if not isinstance(weights, Mapping):
        return []
    problems = []
    unknown = [k for k in weights if k not in names]
    for k in unknown:
        problems.append(f"`cpift.slerp_weights.{k}`: no task named {k!r}"
                        + (f" — did you mean `{g}`?" if (g := did_you_mean(str(k), names)) else "")
                        + f" (tasks: {', '.join(names)})")
    missing = [n for n in names if n not in weights]
    if missing and not unknown:
        problems.append(f"`cpift.slerp_weights` needs a weight for every task (missing: {', '.join(missing)})")
    values = list(weights.values())
    numeric = all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf") for w in values)
    if values and numeric and not sum(values) > 0:
        problems.append("`cpift.slerp_weights` are all 0: give at least one task a positive weight")
    if getattr(cpift, "slerp_t", 0.5) != 0.5:
        problems.append("set either `cpift.slerp_t` or `cpift.slerp_weights`, not both (two tasks: weights "
                        "(1-t, t) are slerp_t=t)")
    return problems


def _world_version(raw: Mapping[str, Any]) -> Any:
    section = raw.get("toyworld")
    return section.get("version") if isinstance(section, Mapping) else None


def _world_tasks(version: Any = None) -> tuple[str, ...] | None:
    """Task names of the tiny world `version` (the default version when `None`; `None` if it is invalid,
    which the `toyworld.version` check reports)."""
    try:
        from safe_cpift.toyworld.world import DEFAULT_WORLD_VERSION, WORLD_VERSIONS, world_task_names
    except ImportError:  # pragma: no cover - the world ships with the package
        return None
    version = DEFAULT_WORLD_VERSION if version is None else version
    return world_task_names(version) if version in WORLD_VERSIONS else None


def expand_toyworld_tasks(raw: Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, Any]:
    """``tasks: toyworld`` → one ``{name, source: toyworld}`` entry per task of the tiny world (of the
    recipe's `toyworld.version`, read after `overrides` such as ``toyworld.version=1``)."""
    raw = dict(raw)
    if raw.get("tasks") == TOYWORLD:
        world = [o for o in overrides if o.startswith("toyworld.")]
        version = _world_version(apply_overrides({"toyworld": raw.get("toyworld") or {}}, world) if world else raw)
        raw["tasks"] = [{"name": name, "source": TOYWORLD} for name in (_world_tasks(version) or ())]
    return raw


def recipe_from_dict(raw: Any, source: str | None = None) -> Recipe:
    """Validate a recipe mapping and build a `Recipe`.

    Raises:
        `ConfigError` listing every problem (unknown keys with did-you-mean, wrong types, ranges,
        cross-field rules) at once.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError([f"a recipe must be a YAML mapping, got {type(raw).__name__}"], source=source)
    raw = expand_toyworld_tasks(raw)
    training, problems = _check_training(raw.get("training") or {})
    recipe: Any = None
    try:
        recipe = Recipe.model_validate({**raw, "training": {}})
    except ValidationError as err:
        problems[:0] = problems_from(err, Recipe)
    problems += _rules(recipe if recipe is not None else draft(Recipe, raw), _world_tasks(_world_version(raw)))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source=source)
    recipe.training = training
    return recipe


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML, typed by the recipe schema; list items
    by index: ``tasks.0.split=test``). The result is validated like a file, so a misspelt key gets a
    did-you-mean like any other unknown key.
    """
    return set_dotted(raw, overrides, _override_annotation)


def _override_annotation(parts: list[str]) -> Any:
    if len(parts) == 2 and parts[0] == "training":
        return sft_config_fields().get(parts[1], Any)
    return annotation_at(Recipe, parts)


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe YAML file.

    Args:
        path (`str` or `Path`): the recipe file.
        overrides (`Iterable[str]`, *optional*): ``key.sub=value`` strings from the command line.

    Raises:
        `FileNotFoundError`; `ConfigError` (a `ValueError`) listing every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], source=str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError([f"not UTF-8 text ({err.reason} at byte {err.start + 1}); save the file as UTF-8"],
                          source=str(path)) from None
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise ConfigError([f"a recipe must be a YAML mapping, got {type(raw).__name__}"], source=str(path))
    overrides = list(overrides)
    recipe = recipe_from_dict(apply_overrides(expand_toyworld_tasks(raw, overrides), overrides), source=str(path))
    resolve_paths(recipe, path.parent)
    return recipe


def resolve_paths(recipe: Recipe, base: Path) -> Recipe:
    """Make relative data paths that exist beside the recipe file absolute (in place).

    A relative `source` (`tasks[i].source`/`test_source`, `safety.data.source`, `eval.harmful/benign.source`)
    is read relative to the recipe's directory when the file is there, else relative to the working directory.
    """
    def fix(value: str | None) -> str | None:
        if not value or value == TOYWORLD or Path(value).is_absolute():
            return value
        candidate = (base / value).expanduser()
        return str(candidate.resolve()) if candidate.exists() else value

    for task in recipe.tasks:
        task.source = fix(task.source)
        task.test_source = fix(task.test_source)
    recipe.safety.data.source = fix(recipe.safety.data.source)
    for ps in (recipe.eval.harmful, recipe.eval.benign):
        if ps is not None:
            ps.source = fix(ps.source)
    if recipe.attack is not None:
        recipe.attack.data.source = fix(recipe.attack.data.source)
    return recipe


def find_recipe(name: str) -> Path:
    """Path of a recipe shipped with safe-cpift (``"toy"`` → ``recipes/toy.yaml``)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "recipes", here.parents[1] / "recipes"):
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no built-in recipe `{name}` (looked in {here / 'recipes'} and {here.parents[1] / 'recipes'})")



def build_metric(task: TaskSpec) -> Callable[[str, str], float]:
    """Score function ``(response, reference) -> float`` for a task's `metric` and `answer_pattern`.

    The one implementation shared with `safe-cpift eval` and the lm-eval task files:
    `safe_cpift.evals.metrics.resolve_metric` (``contains`` is case-insensitive and
    whitespace-normalised; ``regex`` extracts `answer_pattern` from both texts).
    """
    from safe_cpift.evals.metrics import resolve_metric

    try:
        return resolve_metric(task.metric, answer_pattern=task.answer_pattern)
    except ValueError as err:
        raise ValueError(f"task `{task.name}`: {err}") from err
