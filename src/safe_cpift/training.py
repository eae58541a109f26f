"""A thin, CPU-safe wrapper around TRL's `SFTTrainer` (used for user-task SFT in the pipeline).

TRL 1.16's `SFTConfig` defaults suit GPUs (bf16, gradient checkpointing); on CPU they make a tiny
model ~10x slower. `sft_config` sets CPU-safe defaults; `train_sft` trains and measures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from safe_cpift.runtime import configure_runtime

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


def supports_assistant_mask(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template marks assistant turns with `{% generation %}`."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def sft_config(output_dir: str, tokenizer: Any = None, **overrides: Any):
    """A `trl.SFTConfig` with CPU-safe defaults; keyword `overrides` win.

    Defaults: `use_cpu=True`, `bf16=False`, `activation_checkpointing=False`, `report_to="none"`,
    `save_strategy="no"`, `max_length=256`, no packing, `logging_steps=10`, no tqdm bars,
    `dataloader_num_workers=0`, and `assistant_only_loss=True` when `tokenizer`'s chat template has
    `{% generation %}` markers.
    """
    from trl import SFTConfig

    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", save_strategy="no", max_length=256, packing=False, logging_steps=10,
        disable_tqdm=True, dataloader_num_workers=0, lr_scheduler_type="constant_with_warmup",
        warmup_steps=0.05, weight_decay=0.0, seed=0,
        assistant_only_loss=tokenizer is not None and supports_assistant_mask(tokenizer),
    )
    if "activation_checkpointing" in SFTConfig.__dataclass_fields__:
        kwargs["activation_checkpointing"] = False
    kwargs.update(overrides)
    if kwargs.get("packing") and kwargs.get("packing_strategy", "bfd") == "bfd":
        raise ValueError(
            "`packing=True` with `packing_strategy='bfd'` lets sequences attend across each other on CPU; "
            "set `packing_strategy='wrapped'` or `packing=False`"
        )
    return SFTConfig(**kwargs)


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
    num_threads: int | None = None,
    **config_overrides: Any,
) -> TrainStats:
    """Supervised fine-tuning of `model` in place on a chat `messages` (or prompt/completion) dataset.

    Args:
        model (`PreTrainedModel`): trained in place (float32 on CPU).
        tokenizer (`PreTrainedTokenizerBase`): with a chat template; assistant-only loss when it has
            `{% generation %}` markers.
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
        num_threads (`int`, *optional*): torch threads (see `configure_runtime`).
        config_overrides: any other `SFTConfig` field.

    Returns:
        `TrainStats`: measured `train_seconds`, `examples_seen`, `steps`, `final_loss`.
    """
    from trl import SFTTrainer

    if (max_steps is None) == (num_train_epochs is None):
        raise ValueError("pass exactly one of `max_steps` or `num_train_epochs`")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"`max_steps` must be >= 1, got {max_steps}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    columns = set(dataset.column_names)
    if "messages" in columns:
        dataset = dataset.select_columns(["messages"])
    elif {"prompt", "completion"} <= columns:
        dataset = dataset.select_columns(["prompt", "completion"])
    else:
        raise ValueError(
            f"`dataset` needs a `messages` column or `prompt`/`completion` columns, got {sorted(columns)}; "
            "convert it with `safe_cpift.data.load_task_dataset`"
        )
    configure_runtime(num_threads)
    steps_kw = {"max_steps": max_steps} if max_steps is not None else {"num_train_epochs": num_train_epochs}
    args = sft_config(output_dir, tokenizer, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
                      seed=seed, data_seed=seed, **steps_kw, **config_overrides)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks))
    if args.disable_tqdm:  # transformers then prints every log dict to stdout; keep the library quiet
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    steps = int(trainer.state.global_step)
    examples = steps * batch_size * int(args.gradient_accumulation_steps)
    model.eval()
    logger.info("SFT: %d steps (%d examples) in %.1fs, loss %.4f", steps, examples, seconds, result.training_loss)
    return TrainStats(train_seconds=seconds, examples_seen=examples, steps=steps,
                      final_loss=float(result.training_loss))
