"""Token-wise constraint: keep the first response tokens on safety prompts close to the aligned model.

Qi et al. 2024 ("Safety alignment should be made more than just a few tokens deep") show that
fine-tuning erodes safety mostly through the first few tokens of the reply. `ResponseTokenKL` adds,
before each optimizer step, the gradient of `β · KL(p_aligned ‖ p_model)` averaged over the first
`first_k` response tokens of a small batch of safety chats, with a frozen copy of the aligned model
as the reference. Cost: one extra forward of each model and one backward per step, and the
reference model's memory.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from safe_cpift.protect.aux_grad import GradientProtection
from safe_cpift.protect.batches import ChatBatches, response_kl


class ResponseTokenKL(GradientProtection):
    """Pull the first `first_k` response tokens on safety prompts toward the aligned model.

    Args:
        reference (`PreTrainedModel`): the aligned model (a frozen copy is kept; pass the model
            before training starts).
        tokenizer: with a chat template.
        safety_rows (`Sequence`): safety chats.
        strength (`float`, *optional*, defaults to `1.0`): β.
        first_k (`int`, *optional*, defaults to `5`): response tokens constrained.
        every (`int`, *optional*, defaults to `1`), batch_size, seed, max_length: as in `ChatBatches`.
    """

    name = "token_kl"

    def __init__(self, reference: Any, tokenizer: Any, safety_rows: Sequence[Any], strength: float = 1.0,
                 first_k: int = 5, every: int = 1, batch_size: int = 8, seed: int = 0, max_length: int = 256) -> None:
        super().__init__(every)
        if first_k < 1:
            raise ValueError(f"`first_k` must be >= 1, got {first_k}")
        if strength < 0:
            raise ValueError(f"`strength` must be >= 0, got {strength}")
        self.reference = copy.deepcopy(reference).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.strength = strength
        self.first_k = first_k
        self.batches = ChatBatches(tokenizer, safety_rows, batch_size=batch_size, max_length=max_length, seed=seed)

    def adjust(self, model: Any, step: int) -> dict[str, float]:
        self.reference.to(next(model.parameters()).device)
        kl = response_kl(model, self.reference, self.batches.next(), self.first_k)
        (self.strength * kl).backward()  # accumulates into the task gradient already in .grad
        return {"kl": float(kl.detach())}


def kl_on_rows(model: Any, reference: Any, tokenizer: Any, rows: Sequence[Any], first_k: int = 5) -> float:
    """The mean first-`first_k`-token KL of `model` from `reference` over `rows` (for evaluation)."""
    batches = ChatBatches(tokenizer, rows, batch_size=len(rows), seed=0)
    with torch.no_grad():
        return float(response_kl(model, reference, batches.next(), first_k))
