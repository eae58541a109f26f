"""Turn a validated `Recipe` into a `PipelineSpec`: resolve the model, the data and the evaluator.

`toyworld` anywhere in a recipe means the built-in tiny world (its aligned model, its safety data, its
tasks, its held-out harmful/benign prompts); `xstest:unsafe` / `xstest:safe` are XSTest's prompts shipped
with the package; everything else is a local file or a hub id. Without `eval.harmful`/`eval.benign`, the
sets of `safe_cpift.evals.defaults` are used (the tiny world's for a toyworld model, XSTest otherwise).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from safe_cpift.evals.conversation import conversation_prompt
from safe_cpift.pipeline.evaluator import Evaluator, TaskEval, prompt_and_reference
from safe_cpift.pipeline.spec import PipelineSpec, TrainSettings

logger = logging.getLogger(__name__)

TOYWORLD = "toyworld"


def _world(recipe: Any) -> Any:
    from safe_cpift.toyworld.world import ToyWorld, ToyWorldConfig

    seed = recipe.toyworld.seed if recipe.toyworld.seed is not None else recipe.seed
    version = {} if recipe.toyworld.version is None else {"version": recipe.toyworld.version}
    return ToyWorld(ToyWorldConfig(seed=seed, quick=recipe.toyworld.quick, **version, **recipe.toyworld.settings))


def _load_data(spec: Any, name: str | None, *, split: str | None = None, subset: str | None = None,
               limit: int | None = None) -> Any:
    from safe_cpift.data import load_task_dataset

    return load_task_dataset(spec.source, format=spec.format, split=split or spec.split, name=name,
                             columns=spec.columns, subset=subset if subset is not None else spec.subset,
                             limit=limit if limit is not None else spec.limit)


def _prompt_rows(ps: Any, world_rows: Any | None) -> list[dict[str, Any]]:
    """Prompts of a recipe `PromptSpec` (`toyworld`, a bundled or public set, a local table, or a hub
    dataset) as rows `{"prompt", "type"}`; `type` is the row's `category` or `type` column (XSTest's
    prompt types), "" without one. A `messages` value gives the whole conversation up to its final
    assistant turn."""
    from safe_cpift.evals.public_sets import load_public_set
    from safe_cpift.evals.sources import is_set_name

    if ps.source == TOYWORLD:
        rows = world_rows.to_list()
        column = "messages"
    elif is_set_name(ps.source):
        rows = load_public_set(ps.source)  # xstest:safe / xstest:unsafe read the bundled copy
        column = "prompt"
    else:
        path = Path(ps.source).expanduser()
        if path.exists():
            from safe_cpift.evals.public_sets import read_table

            rows = read_table(path)
        else:
            from datasets import load_dataset

            try:
                rows = load_dataset(ps.source, ps.subset, split=ps.split).to_list()
            except Exception as err:
                raise ValueError(f"could not load prompts `{ps.source}` (split={ps.split!r}): {err}; "
                                 "download them and give a local file") from err
        column = ps.column
    for key, value in (ps.where or {}).items():
        rows = [r for r in rows if r.get(key) == value]
    prompts = []
    for i, row in enumerate(rows):
        if column not in row:
            raise ValueError(f"prompts `{ps.source}`: row {i} has no column `{column}` (columns: {sorted(row)}); "
                             "set `column` in the recipe")
        value = row[column]
        if isinstance(value, list):  # a messages list: the whole conversation up to the final assistant turn
            value = conversation_prompt(value)
        if not value or (isinstance(value, str) and not value.strip()):
            raise ValueError(f"prompts `{ps.source}`: row {i} has no usable prompt in `{column}`")
        prompts.append({"prompt": value, "type": str(row.get("category") or row.get("type") or "")})
    if ps.limit is not None:
        prompts = prompts[: ps.limit]
    if not prompts:
        raise ValueError(f"prompts `{ps.source}` gave no rows (after `where` filtering)")
    return prompts


def _task_eval(task: Any, world: Any, cap: int | None) -> TaskEval:
    if task.source == TOYWORLD and (task.test_source in (None, TOYWORLD)):
        ds = world.task_test(task.name)
    else:
        from safe_cpift.data import load_task_dataset

        ds = load_task_dataset(task.test_source or task.source, format=task.format, split=task.test_split,
                               name=task.name, columns=task.columns,
                               subset=task.test_subset if task.test_subset is not None else task.subset,
                               limit=task.test_limit)
    pairs = [prompt_and_reference(m) for m in ds["messages"]]
    if cap is not None:
        pairs = pairs[:cap]
    from safe_cpift.recipe import build_metric

    return TaskEval([p for p, _ in pairs], [r for _, r in pairs], build_metric(task))


def eval_prompt_specs(recipe: Any) -> dict[str, dict[str, Any]]:
    """`{"harmful": {"source", "default", "description", "spec"}, "benign": ...}`: the recipe's
    `eval.harmful`/`eval.benign`, else the defaults for its model (`evals.defaults.chosen_prompt_sets`)."""
    from safe_cpift.evals.defaults import chosen_prompt_sets
    from safe_cpift.recipe import PromptSpec

    ev = recipe.eval
    chosen = chosen_prompt_sets(recipe.model.source, ev.harmful, ev.benign)
    for info in chosen.values():
        spec = info["source"] if isinstance(info["source"], PromptSpec) else PromptSpec(source=info["source"])
        info.update(spec=spec, source=spec.source, description=info["description"] if info["default"] else spec.source)
    return chosen


def build_evaluator(recipe: Any, world: Any | None) -> Evaluator:
    """The evaluator of a recipe's `eval` section (suites `tasks`, `refusal`, `overrefusal`)."""
    ev = recipe.eval
    notes = []
    suites = set(ev.suites)
    tasks = {t.name: _task_eval(t, world, ev.task_examples) for t in recipe.tasks} if "tasks" in suites else {}
    specs = eval_prompt_specs(recipe)
    harmful = _prompt_rows(specs["harmful"]["spec"], world.harmful_test() if world else None) \
        if "refusal" in suites else None
    benign = _prompt_rows(specs["benign"]["spec"], world.benign_test() if world else None) \
        if "overrefusal" in suites else None
    sets = {kind: {k: v for k, v in specs[kind].items() if k != "spec"} for kind, rows in
            (("harmful", harmful), ("benign", benign)) if rows is not None}
    lm_eval = [t.strip() for s in ev.suites if s.startswith("lm-eval:")
               for t in s.removeprefix("lm-eval:").split(",") if t.strip()]
    for suite, key in (("tasks", "task scores"), ("refusal", "refusal rates"), ("overrefusal", "over-refusal rates")):
        if suite not in suites:
            notes.append(f"suite `{suite}` not in `eval.suites`: no {key} were measured")
    return Evaluator(tasks=tasks, harmful=[r["prompt"] for r in harmful] if harmful is not None else None,
                     benign=[r["prompt"] for r in benign] if benign is not None else None,
                     harmful_types=[r["type"] for r in harmful] if harmful is not None else None,
                     benign_types=[r["type"] for r in benign] if benign is not None else None,
                     sets=sets, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, notes=notes,
                     lm_eval_tasks=lm_eval)


def _load_task(recipe: Any, world: Any, name: str) -> Any:
    task = next(t for t in recipe.tasks if t.name == name)
    if task.source == TOYWORLD:
        return world.task_train(name)
    return _load_data(task, name)


def _load_safety(recipe: Any, world: Any) -> Any:
    data = recipe.safety.data
    if data.source == TOYWORLD:
        return world.safety_train()
    return _load_data(data, "safety")


def _attack_notes(recipe: Any) -> list[str]:
    attack = recipe.attack
    if attack is None or attack.fraction <= 0:
        return []
    return [f"fine-tuning attack: {attack.fraction:.0%} of every task's training rows are harmful requests "
            f"answered compliantly (`{attack.data.source}`); every method trained on the same contaminated data"]


def _task_loader(recipe: Any, world: Any) -> Any:
    """`load_task(name)`; with an `attack` section every task's rows carry the harmful-compliant share.

    Every method (baselines, probes, pipelined stages) reads task data through this one loader, so an
    attack recipe reaches all of them alike.
    """
    load_task = functools.partial(_load_task, recipe, world)
    attack = recipe.attack
    if attack is None or attack.fraction <= 0:
        return load_task
    from safe_cpift.toyworld.attack import contaminating_loader, harmful_compliant

    rows = harmful_compliant(world, seed=recipe.seed) if attack.data.source == TOYWORLD else _load_data(attack.data, "attack")
    return contaminating_loader(load_task, rows, attack.fraction, seed=recipe.seed)


def spec_from_recipe(recipe: Any) -> PipelineSpec:
    """Resolve a validated `safe_cpift.recipe.Recipe` into the pipeline's `PipelineSpec`.

    The tiny world is built (or loaded from its cache) when the recipe names `toyworld`.
    """
    # a tiny-world model directory (not `toyworld`) gets the world's held-out prompts by default too
    needs_world = recipe.uses_toyworld or any(s["source"] == TOYWORLD for s in eval_prompt_specs(recipe).values())
    world = _world(recipe) if needs_world else None
    model = recipe.model
    if model.source == TOYWORLD:
        aligned, base = str(world.aligned_model_path()), str(world.base_model_path())
    else:
        aligned, base = model.source, model.base
    if model.base == TOYWORLD:
        base = str(world.base_model_path())
    training = dict(recipe.training)
    batch = int(training.pop("per_device_train_batch_size", 16))
    lr = float(training.pop("learning_rate", 1e-3))
    max_length = training.pop("max_length", None)
    evaluator = build_evaluator(recipe, world)
    core = recipe.safety.core
    cp = recipe.cpift
    return PipelineSpec(
        aligned_model=aligned,
        tokenizer=model.tokenizer or None,
        base_model=base,
        task_names=[t.name for t in recipe.tasks],
        load_task=_task_loader(recipe, world),
        load_safety=functools.partial(_load_safety, recipe, world),
        evaluate=evaluator,
        seed=recipe.seed,
        top_p=cp.top_p, scope=cp.scope, tau=cp.tau, slerp_t=cp.slerp_t, slerp_weights=cp.slerp_weights,
        task_scorer=cp.scorer,
        safety_top_p=core.top_p, safety_scope=core.scope, safety_scorer=core.scorer,
        safety_mix=recipe.safety.mix_fraction,
        safety_probe_examples=core.probe_examples,
        probe_examples=cp.probe_examples,
        probe_lora=cp.probe_lora.model_dump() if cp.probe_lora is not None else None,
        protect_source=core.protect_source,
        examples_per_method=recipe.budget.examples_per_method,
        include_probes=recipe.budget.include_probes, single_task=recipe.budget.single_task,
        freeze_safety_core=cp.freeze_safety_core, freeze_earlier_groups=cp.freeze_earlier_groups,
        mix_safety=cp.mix_safety, replay_fraction=cp.replay_fraction, track_stages=cp.track_stages,
        protections=tuple(recipe.protect.safe_cpift),
        protect_settings=recipe.protect.model_dump(exclude={"safe_cpift"}),
        methods=tuple(recipe.methods),
        train=TrainSettings(learning_rate=lr, batch_size=batch, max_length=max_length, overrides=training,
                            precision=model.precision),
        dtype=model.dtype,
        trust_remote_code=model.trust_remote_code,
        num_threads=recipe.num_threads,
        prune_models=recipe.prune_models,
        recipe=recipe.to_dict(),
        name=recipe.description or "safe-cpift run",
        notes=list(evaluator.notes) + _attack_notes(recipe),
    )
