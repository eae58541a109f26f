"""A thin wrapper around TRL's `SFTTrainer` (used for user-task SFT in the pipeline).

TRL 1.16's `SFTConfig` defaults suit GPUs (bf16, gradient checkpointing); on CPU they make a tiny
model ~10x slower. `sft_config` sets safe defaults (the device from `resolve_device`, float32 unless
asked); `train_sft` trains and measures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from safe_cpift.precision import check_model_dtype, precision_config, resolve_precision
from safe_cpift.sft_data import LOSS_SETTINGS, completion_only_dataset, supports_assistant_mask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainStats:
    """What one `train_sft` call measured.

    Args:
        train_seconds (`float`): wall time of `trainer.train()`.
        examples_seen (`int`): steps x per-device batch size x gradient accumulation.
        steps (`int`): optimizer steps taken.
        final_loss (`float`): the trainer's mean training loss.
    """

    train_seconds: float
    examples_seen: int
    steps: int
    final_loss: float


# SFTConfig fields that train_sft decides; passing them is refused rather than silently replaced
LIBRARY_OWNED = {
    **{k: "prompt tokens never carry loss: safe-cpift masks them for every data format and chat template "
          "(`safe_cpift.sft_data`)" for k in LOSS_SETTINGS},
}


def _checkpointing(kwargs: dict[str, Any], fields: Any) -> None:
    """Make `gradient_checkpointing` (the name recipes use) reach transformers 5 as written.

    transformers 5 reads the deprecated `gradient_checkpointing` only when `activation_checkpointing` is
    unset, so a default for the new name would silently drop the old one.
    """
    old, new = kwargs.pop("gradient_checkpointing", None), kwargs.pop("activation_checkpointing", None)
    if old is not None and new is not None and bool(old) != bool(new):
        raise ValueError(f"`gradient_checkpointing={old}` and `activation_checkpointing={new}` disagree; "
                         "set only one of them")
    value = bool(old if old is not None else new) if (old is not None or new is not None) else False
    if "activation_checkpointing" in fields:
        kwargs["activation_checkpointing"] = value
    else:  # pragma: no cover - transformers < 5
        kwargs["gradient_checkpointing"] = value


def sft_config(output_dir: str, tokenizer: Any = None, **overrides: Any):
    """A `trl.SFTConfig` with safe defaults; keyword `overrides` reach it as written.

    Defaults: `use_cpu` unless `safe_cpift.runtime.resolve_device()` picks a GPU (`--device`,
    `$SAFE_CPIFT_DEVICE`, or `auto`: a GPU when one is present), `bf16=False`, activation (gradient)
    checkpointing off, `report_to="none"`, `save_strategy="no"`, `max_length=256`, no packing,
    `logging_steps=10`, no tqdm bars, `dataloader_num_workers=0`, `assistant_only_loss=True` when
    `tokenizer`'s chat template has `{% generation %}` markers. `gradient_checkpointing` is passed on
    as `activation_checkpointing` (its transformers 5 name), so it is never dropped.

    Raises:
        `ValueError` for bfd packing (sequences attend across each other on CPU) and for
        `gradient_checkpointing`/`activation_checkpointing` values that disagree.
    """
    from trl import SFTConfig

    from safe_cpift.runtime import resolve_device

    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), use_cpu=resolve_device() == "cpu", bf16=False, fp16=False,
        report_to="none", save_strategy="no", max_length=256, packing=False, logging_steps=10,
        disable_tqdm=True, dataloader_num_workers=0, lr_scheduler_type="constant_with_warmup",
        warmup_steps=0.05, weight_decay=0.0, seed=0,
        assistant_only_loss=tokenizer is not None and supports_assistant_mask(tokenizer),
    )
    kwargs.update(overrides)
    _checkpointing(kwargs, SFTConfig.__dataclass_fields__)
    if kwargs.get("packing") and kwargs.get("packing_strategy", "bfd") == "bfd":
        raise ValueError(
            "`packing=True` with `packing_strategy='bfd'` lets sequences attend across each other on CPU; "
            "set `packing_strategy='wrapped'` or `packing=False`"
        )
    return SFTConfig(**kwargs)


def make_sft_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    *,
    output_dir: str,
    max_steps: int | None = None,
    num_train_epochs: float | None = None,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    precision: str | None = None,
    **config_overrides: Any,
) -> Any:
    """The `SFTTrainer` that `train_sft` runs (same arguments), ready for `.train()`.

    The data is put in the form whose prompt tokens TRL masks (`safe_cpift.sft_data`), the precision
    mode is checked against the model's dtype, and `trainer.precision` says which mode is in force.
    """
    from trl import SFTTrainer

    if (max_steps is None) == (num_train_epochs is None):
        raise ValueError("pass exactly one of `max_steps` or `num_train_epochs`")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"`max_steps` must be >= 1, got {max_steps}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    owned = sorted(set(config_overrides) & set(LIBRARY_OWNED))
    if owned:
        raise ValueError(f"`{owned[0]}` is set by safe-cpift: {LIBRARY_OWNED[owned[0]]}; remove it from the "
                         "training settings")
    dataset, loss_kwargs = completion_only_dataset(dataset, tokenizer)
    precision = resolve_precision(precision, config_overrides)
    check_model_dtype(model, precision)
    trainer_kwargs: dict[str, Any] = {}
    if precision == "bf16-sr":
        from safe_cpift.precision import bf16_sr_optimizer

        trainer_kwargs["optimizer_cls_and_kwargs"] = bf16_sr_optimizer()
    steps_kw = {"max_steps": max_steps} if max_steps is not None else {"num_train_epochs": num_train_epochs}
    settings = {**config_overrides, **precision_config(precision), **loss_kwargs}
    args = sft_config(output_dir, tokenizer, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                      seed=seed, data_seed=seed, **steps_kw, **settings)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks), **trainer_kwargs)
    if args.disable_tqdm:  # transformers then prints every log dict to stdout; keep the library quiet
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    trainer.precision = precision
    return trainer


def train_sft(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    *,
    output_dir: str,
    max_steps: int | None = None,
    num_train_epochs: float | None = None,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    precision: str | None = None,
    **config_overrides: Any,
) -> TrainStats:
    """Supervised fine-tuning of `model` in place; only completions (assistant turns) carry loss.

    Leaves process-wide state alone (torch threads, denormal flags, the global RNG outside the
    Trainer's own seeding): runtime defaults are the CLI's job (`safe_cpift.runtime.configure_runtime`).

    Args:
        model (`PreTrainedModel`): trained in place; its weights must be in the dtype `precision`
            trains (float32, or bfloat16 for `bf16-sr`).
        tokenizer (`PreTrainedTokenizerBase`): with a chat template (any template: prompts are masked
            with or without `{% generation %}` markers, see `safe_cpift.sft_data`).
        dataset (`datasets.Dataset`): a `messages` column (other columns are dropped), or
            `prompt`/`completion` columns.
        output_dir (`str`): the trainer's scratch directory (nothing is saved by default).
        max_steps (`int`, *optional*): optimizer steps; exactly one of `max_steps` / `num_train_epochs`.
        num_train_epochs (`float`, *optional*): epochs over `dataset`.
        learning_rate (`float`, *optional*, defaults to `1e-3`): suits the tiny world's model; use
            ~1e-5 to 2e-5 for real models.
        batch_size (`int`, *optional*, defaults to `16`): per-device train batch size.
        callbacks (`Sequence[TrainerCallback]`, *optional*): e.g. `CoreFreezeCallback(region)`.
        seed (`int`, *optional*, defaults to `0`).
        precision (`str`, *optional*): `fp32`, `bf16-mixed` (float32 master weights + bf16 autocast)
            or `bf16-sr` (bf16 weights, torchao AdamW with stochastic rounding); by default
            `bf16-mixed` when `bf16=True` is passed, else `fp32` (see `safe_cpift.precision`).
        config_overrides: any other `SFTConfig` field, passed as written. The loss-masking fields
            (`assistant_only_loss`, `completion_only_loss`, `dataset_text_field`) are refused.

    Returns:
        `TrainStats`: measured `train_seconds`, `examples_seen`, `steps`, `final_loss`.
    """
    trainer = make_sft_trainer(model, tokenizer, dataset, output_dir=output_dir, max_steps=max_steps,
                               num_train_epochs=num_train_epochs, learning_rate=learning_rate, batch_size=batch_size,
                               callbacks=callbacks, seed=seed, precision=precision, **config_overrides)
    args = trainer.args
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    steps = int(trainer.state.global_step)
    examples = steps * batch_size * int(args.gradient_accumulation_steps)
    model.eval()
    logger.info("SFT (%s): %d steps (%d examples) in %.1fs, loss %.4f", trainer.precision, steps, examples, seconds,
                result.training_loss)
    return TrainStats(train_seconds=seconds, examples_seen=examples, steps=steps,
                      final_loss=float(result.training_loss))
