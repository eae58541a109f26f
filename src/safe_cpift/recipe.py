"""Run recipes: a YAML file validated against dataclasses whose fields carry help strings.

```python
recipe = load_recipe("recipes/toy.yaml", overrides=["cpift.top_p=0.02", "seed=1"])
recipe.cpift.top_p, recipe.tasks[0].name, recipe.to_dict()
```
Unknown keys are errors with a did-you-mean, and every problem of a recipe is reported at once in
one `ConfigError`. `training` is passed to TRL's `SFTConfig`; its keys are checked against
`SFTConfig`'s fields. The built-in tiny world is named `toyworld` wherever a model, dataset or task
list is expected (`model: {source: toyworld}`, `tasks: toyworld`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from safe_cpift.data import FORMAT_ALIASES, FORMATS, LOCAL_SUFFIXES
from safe_cpift.schema import (
    ConfigError,
    RecipeSection,
    annotation_at,
    build_section,
    check_value,
    did_you_mean,
    set_dotted,
)

__all__ = [
    "TOYWORLD", "METHODS", "BASELINES", "SUITES", "Recipe", "ModelConfig", "DataSpec", "PromptSpec",
    "CoreConfig", "SafetyConfig", "TaskSpec", "CpiftConfig", "BudgetConfig", "EvalConfig",
    "ToyWorldSettings", "AttackConfig", "load_recipe", "recipe_from_dict", "apply_overrides", "find_recipe",
    "sft_config_fields", "build_metric", "expand_toyworld_tasks", "resolve_paths",
]

TOYWORLD = "toyworld"
BASELINES = ("multitask_sft", "sequential_sft", "safety_mix_sft", "cpift")
PEER_BASELINES = ("sppft", "resta")  # opt-in: name them in `baselines`
METHODS = ("aligned", *BASELINES, "safe_cpift")
ALL_METHODS = ("aligned", "multitask_sft", "sequential_sft", "safety_mix_sft", *PEER_BASELINES, "cpift", "safe_cpift")
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


def _f(default: Any = dataclasses.MISSING, help: str = "", **checks: Any) -> Any:
    """A dataclass field with TRL-style help metadata plus validation hints (choices, min, max...)."""
    meta = {"help": help, **checks}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _is_local(source: str) -> bool:
    return Path(source).suffix.lower() in LOCAL_SUFFIXES or Path(source).expanduser().exists()


@dataclass(kw_only=True)
class ModelConfig(RecipeSection):
    source: str = _f(help="The aligned model: a local save_pretrained directory, a hub id, or `toyworld`.")
    base: str | None = _f(None, help="The model before alignment (needed for `safety.core.scorer: alignment`).")
    tokenizer: str | None = _f(None, help="Tokenizer source; defaults to `source`.")
    dtype: str = _f("float32", help="Dtype for eval and the final model (`auto`: the checkpoint's own); training "
                    "weights follow `precision` (docs/dtypes.md).", choices=DTYPES)
    precision: str = _f("auto", help="Training precision: fp32 | bf16-mixed (float32 master weights + bf16 autocast) | "
                        "bf16-sr (bf16 weights, torchao AdamW with stochastic rounding) | auto (bf16-mixed when "
                        "`training.bf16` is true, else fp32).", choices=("auto", "fp32", "bf16-mixed", "bf16-sr"))
    trust_remote_code: bool = _f(False, help="Run the model repository's own code. Leave false unless you trust it.")


@dataclass(kw_only=True)
class DataSpec(RecipeSection):
    source: str = _f(help="A .jsonl/.json/.csv/.parquet file, a hub dataset id, or `toyworld`.")
    format: str = _f("auto", help="messages | prompt_completion | alpaca | auto.", choices=FORMATS + tuple(FORMAT_ALIASES))
    split: str = _f("train", help="Hub split (a local file is one split).")
    subset: str | None = _f(None, help="Hub config name, e.g. `main` for openai/gsm8k.")
    columns: dict[str, str] | None = _f(None, help="Canonical column -> column in the data, e.g. {prompt: question}.")
    limit: int | None = _f(None, help="Use only the first `limit` rows.", min=1)


@dataclass(kw_only=True)
class PromptSpec(RecipeSection):
    source: str = _f(help="Prompts to evaluate: a file, a hub id, `toyworld` (its held-out prompts), or "
                     "`xstest:unsafe` / `xstest:safe` (XSTest, shipped with safe-cpift).")
    split: str = _f("test", help="Hub split.")
    subset: str | None = _f(None, help="Hub config name.")
    column: str = _f("prompt", help="Column holding the prompt (a `messages` column also works).")
    where: dict[str, Any] | None = _f(None, help="Keep rows whose columns equal these values, e.g. {label: safe}.")
    limit: int | None = _f(None, help="Evaluate at most this many prompts.", min=1)


@dataclass(kw_only=True)
class CoreConfig(RecipeSection):
    scorer: str = _f("update", help="update: |θ_tuned-θ_0| after a short safety SFT; alignment: |θ_aligned-θ_base|; "
                     "importance: |θ·∇L| on the safety data.", choices=("update", "alignment", "importance"))
    scope: str = _f("global", help="global: one threshold over all scalars; tensor: top_p per tensor; layer: whole layers.",
                    choices=SCOPES)
    top_p: float = _f(0.01, help="Fraction of scalar entries in the safety core.", min=0.0, max=1.0, min_exclusive=True)
    probe_examples: int = _f(256, help="Training examples (one epoch) of the short safety SFT whose update "
                             "defines the core (`update` scorer).", min=1)
    protect_source: str = _f("aligned", help="Values the frozen core keeps: `aligned` (θ0's) or `safety_probe` "
                             "(those after the short safety SFT; needs scorer `update`).",
                             choices=("aligned", "safety_probe"))


@dataclass(kw_only=True)
class SafetyConfig(RecipeSection):
    data: DataSpec = _f(help="Safety training data (refusals + benign look-alikes), or `toyworld`.")
    core: CoreConfig = _f(help="How the safety core is found.")
    mix_fraction: float = _f(0.05, help="Share of safety examples mixed into user SFT (safety_mix_sft, safe_cpift).",
                             min=0.0, max=1.0, max_exclusive=True)


@dataclass(kw_only=True)
class TaskSpec(RecipeSection):
    name: str = _f(help="Task name (letters, digits, `_.-`); with `source: toyworld`, a task of the tiny world.")
    source: str = _f(help="Training data: a file, a hub id, or `toyworld`.")
    format: str = _f("auto", help="messages | prompt_completion | alpaca | auto.", choices=FORMATS + tuple(FORMAT_ALIASES))
    split: str = _f("train", help="Hub split for training.")
    subset: str | None = _f(None, help="Hub config name.")
    columns: dict[str, str] | None = _f(None, help="Canonical column -> column in the data.")
    limit: int | None = _f(None, help="Use only the first `limit` training rows.", min=1)
    test_source: str | None = _f(None, help="Test data; defaults to `source` (required for a local file).")
    test_split: str = _f("test", help="Hub split for testing.")
    test_subset: str | None = _f(None, help="Hub config of the test data; defaults to `subset`.")
    test_limit: int | None = _f(None, help="Evaluate on at most this many test rows.", min=1)
    metric: str = _f("exact", help="exact | contains | regex | python:module:function(response, reference) -> float.")
    answer_pattern: str | None = _f(None, help="For `metric: regex`: the answer is group 1 (or the match) in both texts.")


@dataclass(kw_only=True)
class CpiftConfig(RecipeSection):
    top_p: float = _f(0.01, help="Fraction of entries in each task core.", min=0.0, max=1.0, min_exclusive=True)
    scope: str = _f("global", help="Scope of task cores.", choices=SCOPES)
    scorer: str = _f("update", help="Task core scorer.", choices=("update", "importance"))
    tau: float = _f(0.1, help="Core-overlap threshold: tasks whose cores overlap more share a group.", min=0.0, max=1.0)
    slerp_t: float = _f(0.5, help="SLERP interpolation factor for non-core parameters.", min=0.0, max=1.0)
    probe_examples: int = _f(256, help="Training examples (one epoch) of each task's probe SFT that locates its core.",
                             min=1)
    freeze_safety_core: bool = _f(True, help="safe_cpift: keep the safety core's entries frozen in every stage.")
    freeze_earlier_groups: bool = _f(True, help="Freeze cores of groups trained in earlier stages.")
    mix_safety: bool = _f(True, help="safe_cpift: add `safety.mix_fraction` safety examples to each stage's mix.")
    replay_fraction: float = _f(0.0, help="Share of each later stage's task examples replayed from earlier groups' "
                                "tasks (the paper's mixed-task stages); 0 trains each stage on its group alone.",
                                min=0.0, max=1.0, max_exclusive=True)
    track_stages: bool = _f(True, help="Score every task after fusion and after every pipelined stage (report: "
                            "forgetting and undertraining per stage).")


@dataclass(kw_only=True)
class ProtectConfig(RecipeSection):
    safe_cpift: list[str] = _f(["freeze", "safety_mix"], help="safe_cpift's composition of protections: freeze, "
                               "safety_mix, direction, projection, token_kl, repair (docs/efficacy.md).")
    direction_strength: float = _f(1.0, help="`direction`: λ of the AsFT-style penalty on updates orthogonal to "
                                   "θ_aligned − θ_base.", min=0.0)
    projection_every: int = _f(4, help="`projection`: recompute the safety gradient every N steps.", min=1)
    token_kl_strength: float = _f(1.0, help="`token_kl`: β of the KL to the aligned model.", min=0.0)
    token_kl_first_k: int = _f(5, help="`token_kl`: response tokens kept close to the aligned model.", min=1)
    repair_scales: list[float] = _f([0.0, 0.25, 0.5, 1.0], help="`repair` / `resta`: safety-vector scales tried "
                                    "on the probe (the smallest that restores the aligned refusal is kept).")
    repair_margin: float = _f(0.05, help="`repair` / `resta`: refusal may end this far below the aligned "
                              "model's on the probe, over-refusal this far above.", min=0.0, max=1.0)
    sppft_top_p: float = _f(0.25, help="`sppft` baseline: share of parameters in the frozen safety layers.",
                            min=0.0, max=1.0, min_exclusive=True)


@dataclass(kw_only=True)
class BudgetConfig(RecipeSection):
    examples_per_method: int = _f(512, help="Training examples of the final fine-tuning of every method "
                                  "(equal budget); split across tasks, stages or groups by each method.", min=1)
    include_probes: bool = _f(True, help="Give each SFT baseline safe_cpift's probe examples on top, so every "
                              "method trains on as many examples in total (false: baselines get fewer).")


@dataclass(kw_only=True)
class EvalConfig(RecipeSection):
    suites: list[str] = _f(list(SUITES), help="tasks | refusal | overrefusal | lm-eval:<task>[,...]")
    harmful: PromptSpec | None = _f(None, help="Harmful prompts for the refusal rate: a file, a hub id, `toyworld`, "
                                    "`xstest:unsafe`. Default: `toyworld` for a toyworld model, else "
                                    "`xstest:unsafe` (bundled, offline).")
    benign: PromptSpec | None = _f(None, help="Benign look-alikes for the over-refusal rate: a file, a hub id, "
                                   "`toyworld`, `xstest:safe`. Default: `toyworld` for a toyworld model, else "
                                   "`xstest:safe` (bundled, offline).")
    task_examples: int | None = _f(None, help="Test examples per task (default: all).", min=1)
    max_new_tokens: int = _f(48, help="Generation length for every suite.", min=1)
    batch_size: int = _f(64, help="Generation batch size.", min=1)


@dataclass(kw_only=True)
class ToyWorldSettings(RecipeSection):
    quick: bool = _f(False, help="Smaller, faster tiny world (the demo's --quick).")
    seed: int | None = _f(None, help="World seed; defaults to the recipe's `seed`.", min=0)


@dataclass(kw_only=True)
class AttackConfig(RecipeSection):
    data: DataSpec = _f(help="Harmful requests answered compliantly: `toyworld` (the world's harmful train "
                        "requests) or a data file/hub id in any task format.")
    fraction: float = _f(0.05, help="Share of attack rows in every task's training data (a fine-tuning attack).",
                         min=0.0, max=1.0, max_exclusive=True)


@dataclass(kw_only=True)
class Recipe(RecipeSection):
    model: ModelConfig = _f(help="The aligned model to fine-tune.")
    safety: SafetyConfig = _f(help="Safety data and how its core is found.")
    tasks: list[TaskSpec] = _f(help="User tasks, or `toyworld` for every task of the tiny world.")
    cpift: CpiftConfig = _f(help="CPI-FT settings.")
    training: dict[str, Any] = _f({}, help="Keyword arguments for trl.SFTConfig (learning_rate, "
                                  "per_device_train_batch_size, max_length, weight_decay, ...).")
    baselines: list[str] = _f(list(BASELINES), help="Baselines run beside safe_cpift; peer baselines "
                              "`sppft` and `resta` run when named.")
    protect: ProtectConfig = _f(help="safe_cpift's protections and their settings.")
    eval: EvalConfig = _f(help="Evaluation suites and sizes.")
    budget: BudgetConfig = _f(help="Equal-budget comparison.")
    toyworld: ToyWorldSettings = _f(help="Settings of the built-in tiny world, when used.")
    attack: AttackConfig | None = _f(None, help="Optional fine-tuning attack: contaminate every task's "
                                     "training data with harmful-compliant rows (safe_cpift.toyworld_attack).")
    seed: int = _f(0, help="Seed for data order, sampling and training.", min=0)
    output_dir: str | None = _f(None, help="Run directory (overridden by --output-dir).")
    num_threads: int | None = _f(None, help="torch CPU threads (default $SAFE_CPIFT_NUM_THREADS or 1).", min=1)
    description: str | None = _f(None, help="Free text shown in the report.")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dict; `recipe_from_dict(recipe.to_dict())` gives an equal recipe."""
        return dataclasses.asdict(self)

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


# sections given as a bare string mean `{source: <string>}`
SHORTHAND = {DataSpec: "source", PromptSpec: "source", ModelConfig: "source"}


@functools.lru_cache(maxsize=1)
def sft_config_fields() -> dict[str, Any]:
    """`trl.SFTConfig` field name -> annotated type."""
    from trl import SFTConfig

    return {f.name: f.type for f in dataclasses.fields(SFTConfig) if f.init}


def _check_training(training: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(training, Mapping):
        problems.append(f"`training` must be a mapping of trl.SFTConfig arguments, got {training!r}")
        return {}
    fields = sft_config_fields()
    out = {}
    for key, value in training.items():
        if key in PIPELINE_OWNED:
            problems.append(f"`training.{key}` is set by safe-cpift: {PIPELINE_OWNED[key]}")
        elif key not in fields:
            guess = did_you_mean(key, fields)
            problems.append(f"unknown key `{key}` in `training` (not a trl.SFTConfig field)"
                            + (f" — did you mean `{guess}`?" if guess else ""))
        else:
            value, errs = check_value(value, fields[key], f"training.{key}", {})
            problems.extend(errs)
            out[key] = value
    return out


def _check_task(task: TaskSpec, i: int, world_tasks: tuple[str, ...] | None) -> list[str]:
    where, problems = f"tasks[{i}]", []
    if task.name is None or task.source is None:
        return problems
    if not NAME_RE.match(task.name):
        problems.append(f"`{where}.name` must be letters, digits and `_.-`, got {task.name!r}")
    if not METRIC_RE.match(task.metric):
        problems.append(f"`{where}.metric` must be exact, contains, regex or python:module:function, got {task.metric!r}"
                        + (f" — did you mean `{g}`?" if (g := did_you_mean(task.metric, ("exact", "contains", "regex"))) else ""))
    if task.metric == "regex":
        if not task.answer_pattern:
            problems.append(f"`{where}.answer_pattern` is required with `metric: regex`")
        else:
            try:
                re.compile(task.answer_pattern)
            except re.error as err:
                problems.append(f"`{where}.answer_pattern` is not a valid regex: {err}")
    if task.source == TOYWORLD:
        if world_tasks is not None and task.name not in world_tasks:
            problems.append(f"`{where}.name` {task.name!r} is not a toyworld task"
                            + (f" — did you mean `{g}`?" if (g := did_you_mean(task.name, world_tasks)) else "")
                            + f" (toyworld tasks: {', '.join(world_tasks)})")
    elif task.test_source is None and _is_local(task.source):
        problems.append(f"`{where}.test_source` is required: `{where}.source` is a local file ({task.source}), "
                        "which holds one split — give the test file")
    return problems


def _world_tasks() -> tuple[str, ...] | None:
    try:
        from safe_cpift.toyworld.tasks import TASK_NAMES
    except ImportError:  # pragma: no cover - the world ships with the package
        return None
    return tuple(TASK_NAMES)


def expand_toyworld_tasks(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``tasks: toyworld`` → one ``{name, source: toyworld}`` entry per task of the tiny world."""
    raw = dict(raw)
    if raw.get("tasks") == TOYWORLD:
        raw["tasks"] = [{"name": name, "source": TOYWORLD} for name in (_world_tasks() or ())]
    return raw


def recipe_from_dict(raw: Any, source: str | None = None) -> Recipe:
    """Validate a recipe mapping and build a `Recipe`.

    Raises:
        `ConfigError` listing every problem (unknown keys with did-you-mean, wrong types, ranges).
    """
    if not isinstance(raw, Mapping):
        raise ConfigError([f"a recipe must be a YAML mapping, got {type(raw).__name__}"], source=source)
    raw = expand_toyworld_tasks(raw)
    problems: list[str] = []
    world = _world_tasks()
    if "tasks" in raw and not isinstance(raw["tasks"], list):
        problems.append(f"`tasks` must be `toyworld` or a list of tasks, got {raw['tasks']!r}")
        raw["tasks"] = []
    training = raw.pop("training", {}) or {}
    recipe = build_section(Recipe, {**raw, "training": {}}, "", problems, SHORTHAND)
    checked_training = _check_training(training, problems)
    recipe.training = checked_training
    if not recipe.tasks and not any(p.startswith(("`tasks", "missing required key `tasks")) for p in problems):
        problems.append("`tasks` is empty: give at least one task (or `tasks: toyworld`)")
    recipe.tasks = recipe.tasks or []
    names = [t.name for t in recipe.tasks if t.name is not None]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"task name `{dup}` is used twice in `tasks`; names must be unique")
    for i, task in enumerate(recipe.tasks):
        problems.extend(_check_task(task, i, world))
    if any(getattr(recipe, k) is None for k in ("model", "safety", "eval", "cpift", "budget", "toyworld")):
        raise ConfigError(problems, source=source)  # a section is not even a mapping: report what we have
    for i, suite in enumerate(recipe.eval.suites):
        if suite not in SUITES and not suite.startswith("lm-eval:"):
            problems.append(f"`eval.suites[{i}]` must be one of {', '.join(SUITES)} or lm-eval:<task>, got {suite!r}"
                            + (f" — did you mean `{g}`?" if (g := did_you_mean(suite, SUITES)) else ""))
    allowed = BASELINES + PEER_BASELINES
    for i, name in enumerate(recipe.baselines):
        if name not in allowed:
            problems.append(f"`baselines[{i}]` must be one of {', '.join(allowed)}, got {name!r}"
                            + (f" — did you mean `{g}`?" if (g := did_you_mean(name, allowed)) else ""))
    for i, name in enumerate(recipe.protect.safe_cpift if recipe.protect is not None else []):
        if name not in PROTECTIONS:
            problems.append(f"`protect.safe_cpift[{i}]` must be one of {', '.join(PROTECTIONS)}, got {name!r}"
                            + (f" — did you mean `{g}`?" if (g := did_you_mean(name, PROTECTIONS)) else ""))
    if recipe.safety.core.scorer == "alignment" and recipe.model.base is None and recipe.model.source != TOYWORLD:
        problems.append("`model.base` is required with `safety.core.scorer: alignment` (the model before alignment)")
    if recipe.safety.core.protect_source == "safety_probe" and recipe.safety.core.scorer != "update":
        problems.append("`safety.core.protect_source: safety_probe` needs `safety.core.scorer: update` "
                        "(no safety probe is trained otherwise)")
    if "safety_mix_sft" in recipe.baselines and recipe.safety.mix_fraction == 0:
        problems.append("`safety.mix_fraction` is 0, so `safety_mix_sft` would equal `multitask_sft`; set e.g. 0.05")
    if problems:
        raise ConfigError(problems, source=source)
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
    recipe = recipe_from_dict(apply_overrides(expand_toyworld_tasks(raw), overrides), source=str(path))
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
