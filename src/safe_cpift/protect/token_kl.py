"""Token-wise constraint: keep the first response tokens on safety prompts close to the aligned model.

Qi et al. 2024 ("Safety alignment should be made more than just a few tokens deep") show that
fine-tuning erodes safety mostly through the first few tokens of the reply. `ResponseTokenKL` adds,
before each optimizer step, the gradient of `β · KL(p_aligned ‖ p_model)` averaged over the first
`first_k` response tokens of a small batch of safety chats, with a frozen copy of the aligned model
as the reference. Cost: one extra forward of each model and one backward per step, and the
reference model's memory.

Under FSDP2 every rank runs the same safety batch through the sharded policy (its backward
reduce-scatters the KL gradient into each rank's shard, averaged over identical batches, so equal to
one process's). The reference is sharded the same way by default (`shard_reference=True`: each
module the policy shards with `fully_shard` is sharded in the reference on the same mesh, so a rank
holds 1/N of it and its forward all-gathers layer by layer); `shard_reference=False` keeps it whole
on every rank (no communication, a whole model's memory per rank).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from safe_cpift.protect.aux_grad import GradientProtection
from safe_cpift.protect.batches import ChatBatches, response_kl
from safe_cpift.sharding import is_sharded


def shard_like(reference: torch.nn.Module, model: torch.nn.Module) -> int:
    """`fully_shard` the modules of `reference` that `model` (an FSDP2 model) shards, on the same mesh.

    Args:
        reference (`torch.nn.Module`): a model of the same architecture as `model`, not sharded yet.
        model (`torch.nn.Module`): sharded with `fully_shard` (directly or through accelerate).

    Returns:
        `int`: the number of modules sharded (children before their parents, the root last).

    Raises:
        `ValueError`: when `reference` lacks a module `model` shards (another architecture).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = next(p for p in model.parameters() if is_sharded(p)).device_mesh
    names = [name for name, module in model.named_modules() if isinstance(module, FSDPModule)]
    for name in reversed(names):  # pre-order reversed: every child before its parent
        try:
            target = reference.get_submodule(name) if name else reference
        except AttributeError as err:
            raise ValueError(f"the reference model has no module `{name}`, which the trained model shards: give "
                             "`ResponseTokenKL` a reference of the trained model's architecture, or "
                             "`shard_reference=False`") from err
        fully_shard(target, mesh=mesh, reshard_after_forward=True)
    return len(names)


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
        shard_reference (`bool`, *optional*, defaults to `True`): when the trained model is sharded
            with FSDP2, shard the reference the same way (1/N of its memory per rank); `False` keeps
            it whole on every rank. Without FSDP2 the reference stays whole either way.
    """

    name = "token_kl"

    def __init__(self, reference: Any, tokenizer: Any, safety_rows: Sequence[Any], strength: float = 1.0,
                 first_k: int = 5, every: int = 1, batch_size: int = 8, seed: int = 0, max_length: int = 256,
                 shard_reference: bool = True) -> None:
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
        self.shard_reference = shard_reference
        self.batches = ChatBatches(tokenizer, safety_rows, batch_size=batch_size, max_length=max_length, seed=seed)

    def adjust(self, model: Any, step: int) -> dict[str, float]:
        policy = next(model.parameters())
        reference = next(self.reference.parameters())
        if self.shard_reference and is_sharded(policy) and not is_sharded(reference):
            shard_like(self.reference, model)
        elif not is_sharded(reference):
            self.reference.to(policy.device)
        kl = response_kl(model, self.reference, self.batches.next(), self.first_k)
        (self.strength * kl).backward()  # accumulates into the task gradient already in .grad
        return {"kl": float(kl.detach())}


def kl_on_rows(model: Any, reference: Any, tokenizer: Any, rows: Sequence[Any], first_k: int = 5) -> float:
    """The mean first-`first_k`-token KL of `model` from `reference` over `rows` (for evaluation)."""
    batches = ChatBatches(tokenizer, rows, batch_size=len(rows), seed=0)
    with torch.no_grad():
        return float(response_kl(model, reference, batches.next(), first_k))
