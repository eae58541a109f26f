"""Batched, greedy, chat-templated generation for the eval suites and the safety probe."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from safe_cpift.evals.conversation import Prompt, prompt_messages
from safe_cpift.runtime import seeded

logger = logging.getLogger(__name__)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def build_chat_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], *, system_prompt: str | None = None, chat_template: bool = True
) -> list[str]:
    """Render prompts through the tokenizer's chat template, ready for the assistant's reply.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): tokenizer with a `chat_template`.
        prompts (`Sequence[str | list[dict]]`): one user message, or one whole conversation (system
            prompt and earlier turns included, ending with the user turn to answer), per example.
        system_prompt (`str`, *optional*): a system message placed first in conversations that have none.
        chat_template (`bool`, *optional*, defaults to `True`): set `False` to feed the prompts raw
            (base models without a template).

    Returns:
        `list[str]`: the rendered texts, ending with the generation prompt.
    """
    if not chat_template:
        if any(not isinstance(p, str) for p in prompts):
            raise ValueError("conversations need a chat template; pass `chat_template=True` or string prompts")
        return list(prompts)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no `chat_template`; set `tokenizer.chat_template` or pass `chat_template=False` "
            "to generate from the raw prompts"
        )
    rendered = []
    for prompt in prompts:
        messages = prompt_messages(prompt, system_prompt)
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered


def generate_responses(
    model: Any,
    tokenizer: Any,
    prompts: list[Prompt],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 64,
    seed: int = 0,
    system_prompt: str | None = None,
    chat_template: bool = True,
    progress: bool = True,
) -> list[str]:
    """Generate one greedy reply per user prompt, in batches, and return the new text only.

    Prompts are rendered with the tokenizer's chat template (`add_generation_prompt=True`), sorted by
    length so each left-padded batch wastes little compute, and the replies are returned in the
    original order, decoded without special tokens, cut at the first end-of-sequence token and
    stripped.

    Args:
        model (`PreTrainedModel`): a causal LM; put in eval mode for the call and restored after.
        tokenizer (`PreTrainedTokenizerBase`): its tokenizer; a missing pad token falls back to eos.
        prompts (`list[str | list[dict]]`): user messages, or whole conversations up to the user turn
            to answer (every earlier turn, system prompt included, reaches the chat template).
        max_new_tokens (`int`, *optional*, defaults to `48`): generation budget per reply.
        batch_size (`int`, *optional*, defaults to `64`): prompts per `generate` call.
        seed (`int`, *optional*, defaults to `0`): seed of a forked torch generator used while generating
            (greedy decoding is deterministic; the seed only matters for custom logits processors);
            the caller's global RNG state is left as it was.
        system_prompt (`str`, *optional*): system message prepended to every prompt.
        chat_template (`bool`, *optional*, defaults to `True`): set `False` for raw prompts.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm bar over batches.

    Returns:
        `list[str]`: one reply per prompt, in input order.
    """
    if isinstance(prompts, str):
        raise TypeError("`prompts` must be a list of strings, not one string; wrap it: `[prompt]`")
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    prompts = list(prompts)
    if not prompts:
        return []
    for i, p in enumerate(prompts):
        if not isinstance(p, (str, list)):
            raise TypeError(f"`prompts[{i}]` must be a string or a list of messages, got {type(p).__name__}")

    texts = build_chat_prompts(tokenizer, prompts, system_prompt=system_prompt, chat_template=chat_template)
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else None)
    if pad_id is None:
        raise ValueError("the tokenizer has neither a `pad_token` nor an `eos_token`; set `tokenizer.pad_token`")

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    replies: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    # FSDP2 all-gathers into buffers it reuses in training: inference tensors would poison them
    from safe_cpift.sharding import is_sharded

    no_autograd = torch.no_grad if any(is_sharded(p) for p in model.parameters()) else torch.inference_mode
    try:
        with seeded(seed), no_autograd():
            for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress, leave=False):
                width = max(len(encoded[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids = encoded[i]
                    if ids:
                        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                        attention[row, width - len(ids) :] = 1
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    num_beams=1,
                    pad_token_id=pad_id,
                    eos_token_id=eos_ids or None,
                )
                for row, i in enumerate(batch):
                    new = out[row, width:].tolist()
                    for j, tok in enumerate(new):
                        if tok in eos_ids:
                            new = new[:j]
                            break
                    replies[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    finally:
        if was_training:
            model.train()
    logger.debug("generated %d replies in %d batches", len(replies), len(batches))
    return replies
