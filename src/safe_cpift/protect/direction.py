"""Direction constraints on the trainable entries: keep updates on the alignment's side.

- `AlignmentDirectionPenalty` (AsFT-style, arXiv 2506.08473): the alignment direction of a weight
  matrix is `V = W_aligned − W_base`; Safe LoRA's matrix `C = V Vᵀ / ‖V‖_F` measures how much of an
  update `Δ = W − W_start` lies along it. The penalty `λ Σ ‖(I − C) Δ‖²` over 2-D weights pulls the
  part of the update orthogonal to the alignment back, without forbidding it. Its gradient
  `2λ (I − C)ᵀ(I − C) Δ` is added to the task gradient before each step (`C` is never formed:
  `C x = V (Vᵀ x) / ‖V‖_F`).
- `SafetyGradientProjection` (SPF / GuardSpace-style, arXiv 2601.10141, 2510.14301; PCGrad's
  projection): every `every` steps the gradient `g_s` of the safety loss (response loss on a small
  batch of safety chats) is computed; when the task gradient `g` conflicts with it (`⟨g, g_s⟩ < 0`:
  the task step would raise the safety loss) its component along `g_s` is removed,
  `g ← g − ⟨g, g_s⟩ / ‖g_s‖² · g_s`. Cost: one extra forward/backward every `every` steps and one
  gradient's worth of memory.

Under FSDP2 both work on each rank's dim-0 shard: `Vᵀ Δ` (a sum over rows), the penalty, `⟨g, g_s⟩`
and `‖g_s‖²` are partial sums completed over ranks (`safe_cpift.sharding`), so the update equals a
one-process run's up to float reassociation. The penalty then keeps only this rank's rows of `V`
and of the start weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from safe_cpift.protect.aux_grad import GradientProtection, trainable
from safe_cpift.protect.batches import ChatBatches, response_nll
from safe_cpift.sharding import add_local, global_sum, is_sharded, local_rows, local_tensor, sum_over_ranks


def _strip(name: str) -> str:
    for prefix in ("module.", "_orig_mod.", "base_model.model."):
        name = name.removeprefix(prefix)
    return name


class AlignmentDirectionPenalty(GradientProtection):
    """Penalise the part of each weight update orthogonal to the alignment direction (AsFT-style).

    Args:
        aligned (`Mapping[str, Tensor]`): the aligned model's weights (the start of fine-tuning).
        base (`Mapping[str, Tensor]`): the model before alignment; `aligned − base` is the direction.
        strength (`float`, *optional*, defaults to `1.0`): λ.
        every (`int`, *optional*, defaults to `1`).
    """

    name = "direction"

    def __init__(self, aligned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], strength: float = 1.0,
                 every: int = 1) -> None:
        super().__init__(every)
        if strength < 0:
            raise ValueError(f"`strength` must be >= 0, got {strength}")
        self.strength = strength
        self.start: dict[str, torch.Tensor] = {}
        self._cut: set[str] = set()
        self.direction: dict[str, tuple[torch.Tensor, float]] = {}
        for name, w in aligned.items():
            if w.dim() != 2 or name not in base:
                continue
            if base[name].shape != w.shape:
                raise ValueError(f"`base` tensor {name} has shape {tuple(base[name].shape)}, the aligned model's "
                                 f"{tuple(w.shape)}: give the base model of this aligned model")
            v = (w.float() - base[name].float())
            norm = float(torch.linalg.matrix_norm(v.double()))
            if norm > 0:
                self.start[name] = w.detach().float().clone()
                self.direction[name] = (v, norm)
        if not self.direction:
            raise ValueError("no 2-D weight differs between `aligned` and `base`: there is no alignment direction")

    def orthogonal(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        """`(I − C) Δ` for the weight `name` (whole tensors, before a sharded training cut them to rows)."""
        v, norm = self.direction[name]
        return delta - v @ (v.T @ delta) / norm

    def _rows(self, key: str, p: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor, float]:
        """`V`, the start weights and `‖V‖_F` for parameter `p`: this rank's rows when `p` is sharded.

        The first call on a sharded parameter keeps only those rows (1/N of the memory per rank).
        """
        v, norm = self.direction[key]
        start = self.start[key]
        if key in self._cut and not is_sharded(p):
            raise ValueError(f"this AlignmentDirectionPenalty kept only one rank's rows of `{key}` after an FSDP2 "
                             "training: build a new one (from the whole `aligned` and `base`) for another model")
        if is_sharded(p) and tuple(v.shape) == tuple(p.shape) and key not in self._cut:
            v, start = local_rows(v, p).clone(), local_rows(start, p).clone()
            self.direction[key], self.start[key] = (v, norm), start
            self._cut.add(key)
        device = local_tensor(p.detach()).device
        return v.to(device), start.to(device), norm

    def adjust(self, model: Any, step: int) -> dict[str, float]:
        penalties = []
        for name, p in trainable(model):
            key = _strip(name)
            if key not in self.direction:
                continue
            with torch.no_grad():
                v, start, norm = self._rows(key, p)
                r = local_tensor(p.detach()).float() - start  # this rank's rows of Δ
                r = r - v @ sum_over_ranks(v.T @ r, p) / norm  # Vᵀ Δ sums over all rows
                penalties.append((p, (r.double() ** 2).sum()))
                add_local(p, 2 * self.strength * (r - v @ sum_over_ranks(v.T @ r, p) / norm))
        penalty = float(global_sum([(p, s.reshape(1)) for p, s in penalties])) if penalties else 0.0
        return {"penalty": self.strength * penalty}


class SafetyGradientProjection(GradientProtection):
    """Remove from the task gradient its component that conflicts with the safety loss's gradient.

    Args:
        tokenizer: with a chat template.
        safety_rows (`Sequence`): safety chats (refusals of harmful requests, answers to benign look-alikes).
        every (`int`, *optional*, defaults to `1`): recompute the safety gradient every `every` steps
            (the projection uses the latest one on every step).
        batch_size (`int`, *optional*, defaults to `8`).
        seed (`int`, *optional*, defaults to `0`).
    """

    name = "projection"

    def __init__(self, tokenizer: Any, safety_rows: Sequence[Any], every: int = 1, batch_size: int = 8,
                 seed: int = 0, max_length: int = 256) -> None:
        super().__init__(1)
        self.refresh = every
        self.batches = ChatBatches(tokenizer, safety_rows, batch_size=batch_size, max_length=max_length, seed=seed)
        self.safety_grad: list[torch.Tensor | None] | None = None
        self.conflicts = 0

    def _safety_gradient(self, model: Any, params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
        task = [None if p.grad is None else p.grad.detach().clone() for p in params]
        for p in params:
            p.grad = None
        was_training = model.training
        model.train()
        response_nll(model, self.batches.next()).backward()
        model.train(was_training)
        out = [None if p.grad is None else p.grad.detach().clone() for p in params]
        for p, g in zip(params, task, strict=True):
            p.grad = g
        return out

    def adjust(self, model: Any, step: int) -> dict[str, float]:
        params = [p for _, p in trainable(model)]
        if self.safety_grad is None or step % self.refresh == 0:
            self.safety_grad = self._safety_gradient(model, params)
        pairs = [(p, local_tensor(p.grad), local_tensor(g)) for p, g in zip(params, self.safety_grad, strict=True)
                 if p.grad is not None and g is not None]
        if not pairs:
            return {"dot": 0.0, "conflicts": float(self.conflicts)}
        # ⟨g, g_s⟩ and ‖g_s‖² over whole tensors: float64 partial sums over this rank's shards, summed over ranks
        dot, norm2 = global_sum([(p, torch.stack([(a.double() * b.double()).sum(), (b.double() ** 2).sum()]))
                                 for p, a, b in pairs]).tolist()
        if dot < 0 and norm2 > 0:
            self.conflicts += 1
            for _, a, b in pairs:
                a.sub_(b.to(a.dtype), alpha=dot / norm2)
        return {"dot": dot, "conflicts": float(self.conflicts)}
