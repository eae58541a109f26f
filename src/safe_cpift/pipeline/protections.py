"""The protections of `safe_cpift.protect` inside the pipeline, and the peer baselines built from them.

`safe_cpift` is a named composition (`spec.protections`, default `freeze` + `safety_mix`):

* `freeze` / `safety_mix` are the pipeline's own safety core freezing and safety mix;
* `direction`, `projection`, `token_kl` add their callbacks to every pipelined stage of `safe_cpift`;
* `repair` adds a stage `repair` after the last group: the safety vector θ_aligned − θ_base re-added
  at the scale a refusal probe chooses (probe prompts come from the safety *training* data, never
  from the evaluation sets).

Peer baselines (opt-in through the recipe's `baselines`), each at the SFT baselines' budget:

* `sppft` (SPPFT, Li et al. 2024): multi-task SFT with whole safety layers frozen (the safety
  core's scores at `layer` scope, `sppft_top_p` of the parameters);
* `resta` (RESTA, Bhardwaj et al. 2024): `multitask_sft`'s model with the safety vector re-added at
  the probe-chosen scale.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safe_cpift.pipeline.common import (
    MODEL_DIR,
    REGION_DIR,
    CheckpointWeights,
    RunContext,
    load_model,
    mix,
    save_model,
    split_evenly,
)
from safe_cpift.pipeline.common import train_and_save as _train_and_save
from safe_cpift.pipeline.spec import PROTECTED_METHODS

logger = logging.getLogger(__name__)

REPAIR = "repair"
SPPFT = "sppft"
PROTECTED_SFT = "protected_sft"
RESTA = "resta"
CALLBACK_PROTECTIONS = ("direction", "projection", "token_kl")
PROBE_PROMPTS = 32


def _needs_base(ctx: RunContext, what: str) -> str:
    if not ctx.spec.base_model:
        raise ValueError(f"{what} needs `model.base` (the model before alignment): θ_aligned − θ_base is the "
                         "safety vector / alignment direction")
    return str(ctx.spec.base_model)


def stage_callbacks(ctx: RunContext, method: str) -> list[Any]:
    """The protection callbacks of `method`'s training (`safe_cpift`'s stages and `protected_sft`; none for others)."""
    spec = ctx.spec
    names = [n for n in spec.protections if n in CALLBACK_PROTECTIONS] if method in PROTECTED_METHODS else []
    if not names:
        return []
    settings = spec.protect_settings
    callbacks: list[Any] = []
    rows = list(ctx.safety_data())
    if "direction" in names:  # θ_aligned and θ_base read tensor by tensor: no model loaded for them
        from safe_cpift.protect.direction import AlignmentDirectionPenalty

        callbacks.append(AlignmentDirectionPenalty(CheckpointWeights(ctx, spec.aligned_model),
                                                   CheckpointWeights(ctx, _needs_base(ctx, "`direction`")),
                                                   strength=float(settings.get("direction_strength", 1.0))))
    if "projection" in names:
        from safe_cpift.protect.direction import SafetyGradientProjection

        callbacks.append(SafetyGradientProjection(ctx.tokenizer(), rows, every=int(settings.get("projection_every", 4)),
                                                  batch_size=spec.train.batch_size, seed=spec.seed))
    if "token_kl" in names:
        from safe_cpift.protect.token_kl import ResponseTokenKL

        callbacks.append(ResponseTokenKL(load_model(spec.aligned_model, spec), ctx.tokenizer(), rows,
                                         strength=float(settings.get("token_kl_strength", 1.0)),
                                         first_k=int(settings.get("token_kl_first_k", 5)),
                                         batch_size=spec.train.batch_size, seed=spec.seed))
    return callbacks


def repair_probe(ctx: RunContext) -> Any:
    """A refusal probe from the safety training data: prompts answered with a refusal count as harmful,
    the others as benign look-alikes (at most `PROBE_PROMPTS` of each, seeded)."""
    import random

    from safe_cpift.evals.judge import is_refusal
    from safe_cpift.protect.guard_probe import RefusalProbe

    harmful, benign = [], []
    for row in ctx.safety_data():
        msgs = row["messages"]
        user = next(m["content"] for m in reversed(msgs[:-1]) if m["role"] == "user")
        (harmful if is_refusal(msgs[-1]["content"]) else benign).append(user)
    if not harmful or not benign:
        raise ValueError("post-hoc repair needs safety data with both refusals of harmful requests and answers to "
                         "benign look-alikes, to choose its scale")
    rng = random.Random(ctx.spec.seed)
    pick = lambda xs: xs if len(xs) <= PROBE_PROMPTS else rng.sample(xs, PROBE_PROMPTS)  # noqa: E731
    return RefusalProbe(pick(harmful), pick(benign))


def repair_model(ctx: RunContext, source_dir: Path, tmp: Path, *, keep_core: bool = False) -> dict[str, Any]:
    """Re-add the safety vector to the model in `source_dir` at the probe-chosen scale; save to `tmp/model`.

    With `keep_core`, the safety core's entries are then put back to their protected values. Models in
    memory: the aligned model while the probe measures it, then the model repaired and the copy each
    scale is tried on; θ_aligned and θ_base are read tensor by tensor from their checkpoints.
    """
    from safe_cpift.protect.repair import add_safety_vector, choose_scale

    spec = ctx.spec
    tok = ctx.tokenizer()
    probe = repair_probe(ctx)
    start = probe.run(load_model(spec.aligned_model, spec), tok)  # the probe's baseline; that model is dropped here
    aligned = CheckpointWeights(ctx, spec.aligned_model)
    base = CheckpointWeights(ctx, _needs_base(ctx, "post-hoc repair"))
    model = load_model(source_dir, spec)
    settings = spec.protect_settings
    margin = float(settings.get("repair_margin", 0.05))

    def score(candidate: Any) -> tuple[float, float, float]:
        r = probe.run(candidate, tok)
        return r.refusal_rate, r.over_refusal_rate, 0.0

    scale, tried = choose_scale(model, aligned, base, score, scales=settings.get("repair_scales", (0.0, 0.25, 0.5, 1.0)),
                                min_refusal=start.refusal_rate - margin,
                                max_over_refusal=start.over_refusal_rate + margin)
    add_safety_vector(model, aligned, base, scale)
    if keep_core:  # the frozen safety core keeps its protected values exactly
        from safe_cpift.pipeline.safety_core import STAGE as SAFETY_CORE
        from safe_cpift.pipeline.safety_core import protect_source_dir
        from safe_cpift.protect.repair import restore_entries

        restore_entries(model, ctx.region(SAFETY_CORE), protect_source_dir(ctx))
    save_model(model, tok, Path(tmp) / MODEL_DIR)
    return {"scale": scale, "tried": {str(k): list(v) for k, v in tried.items()},
            "probe": {"harmful": len(probe.harmful_prompts), "benign": len(probe.benign_prompts),
                      "aligned_refusal": start.refusal_rate, "aligned_over_refusal": start.over_refusal_rate},
            "source": str(source_dir)}


def run_repair(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `repair` (safe_cpift with `repair` in its composition)."""
    from safe_cpift.pipeline.fusion_stage import group_stages

    return repair_model(ctx, ctx.model_dir(group_stages(ctx, "safe_cpift")[-1]), tmp,
                        keep_core=ctx.spec.freeze_safety_core)


def run_resta(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `resta`: `multitask_sft`'s model with the safety vector re-added."""
    from safe_cpift.pipeline.baselines import MULTITASK

    return {"method": RESTA, **repair_model(ctx, ctx.model_dir(MULTITASK), tmp)}


def run_protected_sft(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `protected_sft`: one multi-task SFT from the aligned model with `safe_cpift`'s protections
    (`protect.safe_cpift`: the frozen safety core, the safety mix and the training-time callbacks; not `repair`)
    and none of CPI-FT's probes, fusion or stages: what the pipeline adds over its protections.

    It trains on as many examples as `safe_cpift` in all: the baselines' budget less the safety probe, which it
    pays for as `safe_cpift` does (it needs the safety core)."""
    from safe_cpift.pipeline.baselines import baseline_budget, multitask_data
    from safe_cpift.pipeline.budget import safety_probe_examples, uses_safety
    from safe_cpift.pipeline.safety_core import STAGE as SAFETY_CORE

    spec = ctx.spec
    total = baseline_budget(ctx) - (safety_probe_examples(spec) if spec.include_probes else 0)
    data, counts, seed, _ = multitask_data(ctx, safety=uses_safety(spec, PROTECTED_SFT), total=total,
                                           name=PROTECTED_SFT)
    region = ctx.region(SAFETY_CORE) if spec.freeze_safety_core else None
    summary = {"method": PROTECTED_SFT, "protections": [n for n in spec.protections if n != "repair"],
               "budget": total,
               "train": _train_and_save(ctx, spec.aligned_model, data, tmp, seed=seed, freeze=region,
                                        callbacks=stage_callbacks(ctx, PROTECTED_SFT))}
    summary["train"]["mix"] = counts
    return summary


def run_sppft(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `sppft`: multi-task SFT with whole safety layers frozen."""
    from safe_cpift.pipeline.baselines import baseline_budget
    from safe_cpift.pipeline.safety_core import PROBE_DIR
    from safe_cpift.pipeline.safety_core import STAGE as SAFETY_CORE
    from safe_cpift.regions import CoreRegion

    spec = ctx.spec
    top_p = float(spec.protect_settings.get("sppft_top_p", 0.25))
    probe = ctx.stage_dir(SAFETY_CORE) / PROBE_DIR
    if probe.is_dir():
        layers = CoreRegion.from_update(ctx.theta0(), probe, top_p=top_p, scope="layer", scorer="update",
                                        progress=False)
    else:
        layers = CoreRegion.from_update(_needs_base(ctx, "`sppft` without a safety probe"), ctx.theta0(),
                                        top_p=top_p, scope="layer", scorer="alignment", progress=False)
    layers.save(Path(tmp) / REGION_DIR)
    seed = spec.stage_seed(SPPFT)
    data, counts = mix(ctx, split_evenly(baseline_budget(ctx), list(spec.task_names)), 0, seed)
    summary = {"method": SPPFT, "frozen_fraction": float(layers.fraction),
               "frozen_layers": sorted({n.split(".layers.")[1].split(".")[0] for n in layers.names()
                                        if ".layers." in n}, key=int),
               "train": _train_and_save(ctx, spec.aligned_model, data, tmp, seed=seed, freeze=layers)}
    summary["train"]["mix"] = counts
    return summary
