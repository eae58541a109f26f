"""Small chat batches for the protections that look at safety data during training.

`ChatBatches(tokenizer, rows)` cycles through chat rows (`messages`, last turn the assistant's) in
seeded random order and yields padded batches that know where each response starts, so a loss can
be taken on the response only (`response_nll`) or on its first tokens (`response_kl`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ChatBatch:
    """`input_ids`/`attention_mask` (right-padded) and, per row, the index of its first response token."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_start: torch.Tensor

    def to(self, device: Any) -> ChatBatch:
        return ChatBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_start.to(device))


def _encode(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> tuple[list[int], int]:
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a safety row for a protection must be a chat whose last turn is the assistant's reply")
    prompt = tokenizer.apply_chat_template(list(messages[:-1]), add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full.startswith(prompt):  # templates that render the prompt differently once answered
        raise ValueError("the chat template renders the prompt differently with the reply attached; "
                         "the response start cannot be located")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = (p_ids + r_ids)[:max_length]
    return ids, min(len(p_ids), len(ids) - 1)


class ChatBatches:
    """Endless seeded batches of chat rows.

    Args:
        tokenizer: with a chat template.
        rows (`Sequence`): chat rows (each a `messages` list, or a dict with `messages`).
        batch_size (`int`, *optional*, defaults to `8`).
        max_length (`int`, *optional*, defaults to `256`).
        seed (`int`, *optional*, defaults to `0`): the order; a private generator, global RNGs untouched.
    """

    def __init__(self, tokenizer: Any, rows: Sequence[Any], batch_size: int = 8, max_length: int = 256,
                 seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        encoded = [_encode(tokenizer, r["messages"] if isinstance(r, dict) else r, max_length) for r in rows]
        if not encoded:
            raise ValueError("no safety rows given to the protection")
        self.encoded = encoded
        self.batch_size = min(batch_size, len(encoded))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._rng = random.Random(seed)
        self._order: list[int] = []

    def __iter__(self) -> Iterator[ChatBatch]:
        while True:
            yield self.next()

    def next(self) -> ChatBatch:
        if len(self._order) < self.batch_size:
            order = list(range(len(self.encoded)))
            self._rng.shuffle(order)
            self._order += order
        picked = [self.encoded[i] for i in self._order[: self.batch_size]]
        del self._order[: self.batch_size]
        width = max(len(ids) for ids, _ in picked)
        input_ids = torch.full((len(picked), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(picked), width), dtype=torch.long)
        for i, (ids, _) in enumerate(picked):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        return ChatBatch(input_ids, mask, torch.tensor([s for _, s in picked]))


def response_positions(batch: ChatBatch, first_k: int | None = None) -> torch.Tensor:
    """Boolean mask over logits positions that predict response tokens (the first `first_k` of each)."""
    n, width = batch.input_ids.shape
    pos = torch.arange(width, device=batch.input_ids.device).unsqueeze(0).expand(n, -1)
    start = batch.response_start.unsqueeze(1) - 1  # the logit at t predicts token t + 1
    last = batch.attention_mask.sum(1, keepdim=True) - 1
    mask = (pos >= start) & (pos < last)
    if first_k is not None:
        mask &= pos < start + first_k
    return mask


def response_nll(model: Any, batch: ChatBatch) -> torch.Tensor:
    """Mean next-token loss of `model` on the responses of `batch` (prompt tokens carry no loss)."""
    batch = batch.to(next(model.parameters()).device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    targets = batch.input_ids[:, 1:]
    mask = response_positions(batch)[:, :-1]
    return torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask])


def response_kl(model: Any, reference: Any, batch: ChatBatch, first_k: int) -> torch.Tensor:
    """Mean KL(reference ‖ model) of the next-token distributions at the first `first_k` response tokens."""
    batch = batch.to(next(model.parameters()).device)
    mask = response_positions(batch, first_k)
    with torch.no_grad():
        ref = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[mask].float()
    cur = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[mask].float()
    ref_logp, cur_logp = ref.log_softmax(-1), cur.log_softmax(-1)
    return (ref_logp.exp() * (ref_logp - cur_logp)).sum(-1).mean()
