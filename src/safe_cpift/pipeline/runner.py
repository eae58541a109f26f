"""`run_pipeline`: the whole Safe-CPI-FT run as resumable stages.

The lifecycle, in stage order::

    aligned_eval → safety_core → probe_<task>… → single_task → task_cores → clusters → fusion → cpift_fusion
    → sft_group_<i>… → [repair] → cpift_sft_group_<i>… → multitask_sft → sequential_sft_<i>_<task>…
    → safety_mix_sft → [sppft → resta → lora_sft → safe_lora] → eval_<method>… → report

Both fusions run right after `clusters`: they are the last readers of the probe models, so with
`prune_models` the probes are deleted before any later stage trains; cpift's group stages follow
safe_cpift's, so its fused model is gone before the baselines train (`safe_cpift.pipeline.prune`).

Each stage is a directory of the run, written under a temporary name and renamed when complete, so a
run killed at any moment leaves only complete stages; `resume=True` skips them. Every stage reads its
inputs from disk and seeds itself from the run seed and its own name, so a resumed run produces the
same results.json as an uninterrupted one (except the measured `*_seconds`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_cpift.pipeline import baselines, fusion_stage, lora, probes, protections, results, safety_core
from safe_cpift.pipeline.common import RunContext
from safe_cpift.pipeline.evaluate_stage import ALIGNED_EVAL, eval_stage, final_model_stage, run_eval
from safe_cpift.pipeline.spec import PEER_BASELINES, PipelineSpec

if TYPE_CHECKING:
    from safe_cpift.pipeline.progress import StageObserver

logger = logging.getLogger(__name__)

StageBody = Callable[[Path], dict[str, Any]]
FINAL_MODEL = "final_model"
PUBLISHED = ("results.json", "report.md", "tradeoff.png", "overlap.png")


# the body of each peer baseline's one stage, by method (`PEER_BASELINES` gives their order)
_PEER_STAGES = {protections.SPPFT: protections.run_sppft, protections.RESTA: protections.run_resta,
                lora.LORA_SFT: lora.run_lora_sft, lora.SAFE_LORA: lora.run_safe_lora,
                protections.PROTECTED_SFT: protections.run_protected_sft}


def plan(ctx: RunContext, command: str | None = None) -> Iterator[tuple[str, StageBody]]:
    """The stages of the run in order, each with its body. Lazy: group stages appear once `clusters` is done."""
    spec = ctx.spec
    p = functools.partial
    yield ALIGNED_EVAL, p(run_eval, ctx, method="aligned")
    yield safety_core.STAGE, p(safety_core.run_safety_core, ctx)
    for task in spec.task_names:
        yield probes.probe_stage(task), p(probes.run_probe, ctx, task=task)
    yield probes.SINGLE_TASK, p(probes.run_single_task, ctx)
    yield probes.TASK_CORES, p(probes.run_task_cores, ctx)
    yield probes.CLUSTERS, p(probes.run_clusters, ctx)
    n_groups = len(fusion_stage.groups(ctx))
    yield fusion_stage.fusion_stage("safe_cpift"), p(fusion_stage.run_fusion, ctx, method="safe_cpift")
    if "cpift" in spec.methods:  # the probes' last reader: with `prune_models` they go before anything else trains
        yield fusion_stage.fusion_stage("cpift"), p(fusion_stage.run_fusion, ctx, method="cpift")
    for i in range(n_groups):
        yield fusion_stage.group_stage("safe_cpift", i), p(fusion_stage.run_group, ctx, method="safe_cpift", i=i)
    if "repair" in spec.protections:
        yield protections.REPAIR, p(protections.run_repair, ctx)
    if "cpift" in spec.methods:  # cpift's chain next, so its fused model is not kept while the baselines train
        for i in range(n_groups):
            yield fusion_stage.group_stage("cpift", i), p(fusion_stage.run_group, ctx, method="cpift", i=i)
    if "multitask_sft" in spec.methods:
        yield baselines.MULTITASK, p(baselines.run_multitask, ctx, safety=False)
    if "sequential_sft" in spec.methods:
        for i, name in enumerate(baselines.sequential_stages(ctx)):
            yield name, p(baselines.run_sequential, ctx, i=i)
    if "safety_mix_sft" in spec.methods:
        yield baselines.SAFETY_MIX, p(baselines.run_multitask, ctx, safety=True)
    for method in PEER_BASELINES:  # one stage each, named after the method (stage_names lists the same)
        if method in spec.methods:
            yield method, p(_PEER_STAGES[method], ctx)
    for method in spec.methods:
        if method != "aligned":
            yield eval_stage(method), p(run_eval, ctx, method=method)
    yield results.REPORT, p(results.run_report, ctx, command=command)


def stage_names(spec: PipelineSpec) -> list[str]:
    """Names a user may pass to `stop_after` (group stages as `sft_group_<i>`, `cpift_sft_group_<i>`)."""
    names = [ALIGNED_EVAL, safety_core.STAGE, *[probes.probe_stage(t) for t in spec.task_names],
             probes.SINGLE_TASK, probes.TASK_CORES, probes.CLUSTERS, "fusion"]
    names += ["cpift_fusion"] if "cpift" in spec.methods else []
    names.append("sft_group_<i>")
    if "repair" in spec.protections:
        names.append(protections.REPAIR)
    if "cpift" in spec.methods:
        names.append("cpift_sft_group_<i>")
    if "multitask_sft" in spec.methods:
        names.append(baselines.MULTITASK)
    if "sequential_sft" in spec.methods:
        names += [f"sequential_sft_{i}_{t}" for i, t in enumerate(spec.task_names)]
    if "safety_mix_sft" in spec.methods:
        names.append(baselines.SAFETY_MIX)
    names += [m for m in PEER_BASELINES if m in spec.methods]  # one stage each, named after the method
    names += [eval_stage(m) for m in spec.methods if m != "aligned"] + [results.REPORT]
    return names


def check_stop_after(spec: PipelineSpec, stop_after: str | None) -> None:
    if stop_after is None:
        return
    names = stage_names(spec)
    if stop_after in names:
        return
    for pattern in ("sft_group_<i>", "cpift_sft_group_<i>"):
        if pattern in names and re.fullmatch(pattern.replace("<i>", r"\d+"), stop_after):
            return
    raise ValueError(f"`stop_after` {stop_after!r} is not a stage of this run; stages: {', '.join(names)}")


def _publish(ctx: RunContext, root: Path) -> None:
    """Copy the report's files to the run root and the final safe_cpift model to `final_model/`."""
    from safe_cpift.io import atomic_directory, atomic_write_bytes

    report = ctx.stage_dir(results.REPORT)
    for name in PUBLISHED:
        if (report / name).is_file():
            atomic_write_bytes(root / name, (report / name).read_bytes())
    stage = final_model_stage(ctx, "safe_cpift")
    stamp = {"stage": stage, "results_sha256": hashlib.sha256((report / "results.json").read_bytes()).hexdigest()}
    marker = root / FINAL_MODEL / "safe_cpift_source.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return
    source = ctx.model_dir(stage)
    target_dtype = output_dtype(ctx)
    with atomic_directory(root / FINAL_MODEL, overwrite=True) as tmp:
        if checkpoint_dtype(source) == target_dtype:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        else:  # stage models hold the training precision's weights; the final model the output dtype
            _write_cast(ctx, source, tmp, target_dtype)
        shutil.copy2(report / "MODEL_CARD.md", tmp / "README.md")
        (tmp / marker.name).write_text(json.dumps(stamp))


def checkpoint_dtype(source: str | Path) -> str:
    """The floating dtype of a saved checkpoint's weights (the widest, if they differ)."""
    import torch

    from safe_cpift.io import open_checkpoint

    dtypes = {d for _, d in open_checkpoint(source).fingerprint().values() if getattr(torch, d).is_floating_point}
    widest = None
    for d in dtypes:
        widest = getattr(torch, d) if widest is None else torch.promote_types(widest, getattr(torch, d))
    return str(widest).removeprefix("torch.") if widest is not None else "float32"


def output_dtype(ctx: RunContext) -> str:
    """The dtype of the published final model: the spec's `dtype`; `auto` = θ0's checkpoint dtype."""
    if ctx.spec.dtype != "auto":
        return ctx.spec.dtype
    return checkpoint_dtype(ctx.theta0())


def _write_cast(ctx: RunContext, source: Path, tmp: Path, dtype: str) -> None:
    from safe_cpift.pipeline.common import save_model
    from safe_cpift.pipeline.safety_core import PROTECTED_FILE, verify_safety_core
    from safe_cpift.pipeline.safety_core import STAGE as SAFETY_CORE

    for f in source.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copy2(f, tmp / f.name)
    from safe_cpift.models import load_causal_lm

    model = load_causal_lm(source, dtype=dtype, trust_remote_code=ctx.spec.trust_remote_code)
    save_model(model, ctx.tokenizer(), tmp)
    logger.info("final model written in %s (stage model: %s)", dtype, checkpoint_dtype(source))
    if ctx.spec.freeze_safety_core:
        check = verify_safety_core(tmp, ctx.region(SAFETY_CORE), ctx.stage_dir(SAFETY_CORE) / PROTECTED_FILE)
        if not check["intact"]:
            logger.warning("the final model in %s does not hold the safety core exactly (%d of %d entries differ); "
                           "choose `model.dtype` at least as wide as the aligned checkpoint's", dtype,
                           check["mismatched"], check["entries"])


def run_spec(spec: PipelineSpec, output_dir: str | Path, *, resume: bool = False, stop_after: str | None = None,
             command: str | None = None, observer: StageObserver | None = None) -> dict[str, Any]:
    """Run (or resume) the pipeline described by `spec` in `output_dir`.

    Args:
        spec (`PipelineSpec`): the resolved run.
        output_dir (`str` or `Path`): the run directory.
        resume (`bool`, *optional*): continue after the last complete stage.
        stop_after (`str`, *optional*): stop cleanly after this stage.
        command (`str`, *optional*): the command line, quoted in report.md.
        observer (`StageObserver`, *optional*): told of every stage (the CLI prints a line per stage).

    Returns:
        `dict`: the results (as in results.json), or `{"stopped_after": name, "stages": [...]}` when
        `stop_after` ended the run early.
    """
    check_stop_after(spec, stop_after)
    from safe_cpift.pipeline.rundir import MANIFEST, RunDirectory

    root = Path(output_dir)
    if not resume and (root / MANIFEST).is_file():
        raise ValueError(f"{root} already holds a safe-cpift run; pass `--resume` to continue it, "
                         "or choose a new `--output-dir`")
    ctx = RunContext(spec, root, observer=observer)
    ctx.check_inputs()  # bad data fails here, before any stage
    # the resolved model paths carry the tiny world's cache key: a resumed run must not reuse stages
    # computed from another build of the aligned model
    inputs = {"aligned_model": str(spec.aligned_model), "base_model": str(spec.base_model)}
    run = RunDirectory.open(root, spec.recipe, seed=spec.seed, resume=resume, name=spec.name, inputs=inputs)
    for name, body in plan(ctx, command):
        ctx.current_stage = name
        if observer is not None:
            observer.stage_started(name)
        ran = run.run(name, body)
        if ran:  # the run's disk at its fullest around this stage: after it wrote, before anything is pruned
            from safe_cpift.pipeline.prune import disk_after_stage

            run.annotate(name, disk_after_stage=disk_after_stage(root))
        if spec.prune_models:
            from safe_cpift.pipeline.prune import prune_models

            prune_models(ctx, run)
        if observer is not None:
            observer.stage_finished(name, run.stage_info(name), ran)
        if stop_after is not None and name == stop_after:
            logger.info("stopped after stage %s (continue with --resume)", name)
            return {"stopped_after": name, "stages": run.completed()}
    _publish(ctx, root)
    run.finish()
    return json.loads((root / "results.json").read_text())


def run_pipeline(recipe: Any, output_dir: str | Path | None = None, *, resume: bool = False,
                 stop_after: str | None = None, command: str | None = None,
                 observer: StageObserver | None = None) -> dict[str, Any]:
    """Run the complete Safe-CPI-FT procedure with its baselines, resumably.

    Args:
        recipe (`Recipe`, `str`, `Path` or `PipelineSpec`): a loaded recipe, a recipe file, or a spec.
        output_dir (`str` or `Path`, *optional*): the run directory; defaults to the recipe's `output_dir`.
        resume (`bool`, *optional*, defaults to `False`): continue after the last complete stage of an
            existing run directory (the recipe must be the same).
        stop_after (`str`, *optional*): stop cleanly after this stage (e.g. `clusters`).
        command (`str`, *optional*): the command line that started the run, quoted in report.md.
        observer (`StageObserver`, *optional*): told of every stage as it starts and finishes.

    Returns:
        `dict`: the content of results.json (or `{"stopped_after": ..., "stages": [...]}` when stopped early).
    """
    from safe_cpift.pipeline.from_recipe import spec_from_recipe

    if isinstance(recipe, PipelineSpec):
        spec = recipe
    else:
        if isinstance(recipe, (str, Path)):
            from safe_cpift.recipe import load_recipe

            recipe = load_recipe(recipe)
        spec = spec_from_recipe(recipe)
        output_dir = output_dir or recipe.output_dir
    if output_dir is None:
        raise ValueError("no run directory: pass `output_dir` (--output-dir) or set `output_dir` in the recipe")
    return run_spec(spec, output_dir, resume=resume, stop_after=stop_after, command=command, observer=observer)
