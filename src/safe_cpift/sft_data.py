"""Completion-only loss for every data format and chat template: prompt tokens never carry loss.

TRL masks the prompt in two ways: `assistant_only_loss=True` on `messages` rows (needs
`{% generation %}` markers in the chat template) and `completion_only_loss=True` on
`prompt`/`completion` rows (any template). Qwen2.5's and Llama-3.1's templates have no markers, so
`messages` rows would train on the system and user turns — including the harmful requests of the
safety data. `completion_only_dataset` picks the right form per tokenizer:

- template with generation markers: `messages` rows, `assistant_only_loss=True` (every assistant turn
  carries loss, nothing else);
- any other template: each conversation becomes a conversational prompt/completion pair split before
  its final assistant turn, `completion_only_loss=True` (that turn carries loss; the system, user and
  earlier assistant turns are prompt).

`prompt`/`completion` rows keep their form with `completion_only_loss=True`.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["supports_assistant_mask", "completion_only_dataset", "LOSS_SETTINGS"]

# SFTConfig fields this module decides; a caller setting them is refused (prompts would carry loss)
LOSS_SETTINGS = ("assistant_only_loss", "completion_only_loss", "dataset_text_field")


def supports_assistant_mask(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template marks assistant turns with `{% generation %}`."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def _split_final_turn(batch: dict[str, list]) -> dict[str, list]:
    prompts, completions = [], []
    for messages in batch["messages"]:
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not turns or turns[-1]["role"] != "assistant":
            raise ValueError("every `messages` row must end with an assistant turn (the completion trained on)")
        prompts.append(turns[:-1])
        completions.append(turns[-1:])
    return {"prompt": prompts, "completion": completions}


def completion_only_dataset(dataset: Any, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """`dataset` in the form TRL masks for `tokenizer`, and the `SFTConfig` settings that mask it.

    Args:
        dataset (`datasets.Dataset`): a `messages` column, or `prompt`/`completion` columns (other
            columns are dropped).
        tokenizer (`PreTrainedTokenizerBase`): its chat template decides the form.

    Returns:
        `tuple`: the dataset and `{"assistant_only_loss": ..., "completion_only_loss": ...}`.
    """
    columns = set(dataset.column_names)
    if "messages" in columns:
        dataset = dataset.select_columns(["messages"])
        if supports_assistant_mask(tokenizer):
            return dataset, {"assistant_only_loss": True, "completion_only_loss": None}
        logger.debug("chat template has no generation markers: training on prompt/completion pairs")
        dataset = dataset.map(_split_final_turn, batched=True, remove_columns=["messages"])
        return dataset, {"assistant_only_loss": False, "completion_only_loss": True}
    if {"prompt", "completion"} <= columns:
        return dataset.select_columns(["prompt", "completion"]), {"assistant_only_loss": False,
                                                                  "completion_only_loss": True}
    raise ValueError(
        f"`dataset` needs a `messages` column or `prompt`/`completion` columns, got {sorted(columns)}; "
        "convert it with `safe_cpift.data.load_task_dataset`"
    )
