"""The LoRA path: peer baseline Safe LoRA (Hsu et al., NeurIPS 2024) and the LoRA SFT it repairs.

* `lora_sft`: multi-task SFT of a LoRA adapter on exactly `multitask_sft`'s rows, in the same order
  (the same stage seed), merged into the aligned model. It is the reference that shows what the
  projection itself changes: `safe_lora` − `lora_sft` is Safe LoRA's effect, `lora_sft` −
  `multitask_sft` is LoRA's.
* `safe_lora`: `lora_sft`'s adapter (no second training) with Safe LoRA's projection
  (`safe_cpift.protect.safe_lora.project_lora`): every LoRA layer whose update `ΔW = B A` has a
  cosine below τ with `C ΔW`, `C = V Vᵀ / ‖V‖_F`, `V = W_aligned − W_base`, gets `B ← C B`; then merged.

Settings (`protect.*` in a recipe, `PipelineSpec.protect_settings`), defaults in `LORA_DEFAULTS`:
`lora_r` 8 and `lora_alpha` 32 on every linear layer (`lora_target_modules: all-linear`), at
`lora_learning_rate` = 10 × the run's learning rate when unset (LoRA's best learning rate is about
10× full fine-tuning's, Schulman et al. 2025, "LoRA Without Regret", which also puts adapters on all
layers and uses α = 32); `safe_lora_threshold` τ = 0.5 (the authors' code's default threshold), or
`safe_lora_layers` = k to project the k least aligned layers instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safe_cpift.pipeline.common import (
    ADAPTER_DIR,
    MODEL_DIR,
    CheckpointWeights,
    RunContext,
    load_model,
    save_model,
    train_and_save,
)

logger = logging.getLogger(__name__)

LORA_SFT = "lora_sft"
SAFE_LORA = "safe_lora"
LR_FACTOR = 10.0  # a LoRA learning rate left unset: this × the run's (full fine-tuning) learning rate
RANK, ALPHA, TARGET_MODULES = 8, 32.0, "all-linear"  # adapters of lora_sft and of LoRA probes, unless set
LORA_DEFAULTS: dict[str, Any] = {"lora_r": RANK, "lora_alpha": ALPHA, "lora_target_modules": TARGET_MODULES,
                                 "lora_learning_rate": None, "safe_lora_threshold": 0.5, "safe_lora_layers": None}


def lora_config(rank: int, alpha: float, target_modules: Any) -> Any:
    """The `peft.LoraConfig` of the pipeline's adapters (no dropout, causal LM)."""
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=0.0, target_modules=target_modules,
                      task_type="CAUSAL_LM")


def lora_settings(ctx: RunContext) -> dict[str, Any]:
    """The LoRA and Safe LoRA settings of the run, defaults filled in (`lora_learning_rate` resolved)."""
    given = {k: v for k, v in ctx.spec.protect_settings.items() if k in LORA_DEFAULTS and v is not None}
    out = {**LORA_DEFAULTS, **given}
    if out["lora_learning_rate"] is None:
        out["lora_learning_rate"] = LR_FACTOR * ctx.spec.train.learning_rate
    return out


def run_lora_sft(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `lora_sft`: a LoRA adapter trained on `multitask_sft`'s rows, merged."""
    from safe_cpift.pipeline.baselines import multitask_data

    s = lora_settings(ctx)
    data, counts, seed, total = multitask_data(ctx, safety=False)
    config = lora_config(s["lora_r"], s["lora_alpha"], s["lora_target_modules"])
    train = train_and_save(ctx, ctx.spec.aligned_model, data, tmp, seed=seed,
                           learning_rate=float(s["lora_learning_rate"]), lora=config)
    train["mix"] = counts
    return {"method": LORA_SFT, "budget": total, "same_rows_as": "multitask_sft",
            "lora": {k: s[k] for k in ("lora_r", "lora_alpha", "lora_target_modules", "lora_learning_rate")},
            "train": train}


def run_safe_lora(ctx: RunContext, tmp: Path) -> dict[str, Any]:
    """Body of stage `safe_lora`: `lora_sft`'s adapter projected by Safe LoRA, merged."""
    from peft import PeftModel

    from safe_cpift.precision import load_dtype
    from safe_cpift.protect.safe_lora import project_lora

    spec = ctx.spec
    if not spec.base_model:
        raise ValueError("`safe_lora` needs `model.base` (the model before alignment): V = W_aligned − W_base")
    s = lora_settings(ctx)
    adapter = ctx.stage_dir(LORA_SFT) / ADAPTER_DIR
    # V = W_aligned − W_base read tensor by tensor, in the dtype the adapter was trained on
    dtype = load_dtype(spec.train.precision)
    aligned, base = CheckpointWeights(ctx, spec.aligned_model, dtype), CheckpointWeights(ctx, spec.base_model, dtype)
    model = PeftModel.from_pretrained(load_model(spec.aligned_model, spec, train=True), str(adapter))
    layers = s["safe_lora_layers"]
    report = project_lora(model, aligned, base, threshold=float(s["safe_lora_threshold"]),
                          num_layers=None if layers is None else int(layers))
    save_model(model.merge_and_unload(), ctx.tokenizer(), Path(tmp) / MODEL_DIR)
    cos = sorted(report["cosine"].values())
    return {"method": SAFE_LORA, "source": str(adapter), "threshold": float(s["safe_lora_threshold"]),
            "num_layers": layers, "layers": report["layers"], "projected": report["projected"],
            "cosine": report["cosine"], "kept_norm": {n: report["kept_norm"][n] for n in report["projected"]},
            "cosine_range": [cos[0], cos[len(cos) // 2], cos[-1]] if cos else None}
