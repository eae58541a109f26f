"""Map a tensor's flat entry indices onto the part of it this process holds.

Under FSDP2 (`torch.distributed.fsdp.fully_shard`, or accelerate's FSDP plugin with
`fsdp_version: 2`) every parameter is a `DTensor` sharded on dim 0 over a 1-D device mesh: rank r
holds a contiguous block of rows, so a block of the flattened tensor. A core entry with global flat
index i lives on the rank whose rows contain `i // row_numel`, at local flat index
`i - first_row · row_numel`. Freezing and rollback then work on each rank's shard alone, with no
communication; only the final integrity count is summed over ranks.

Whole tensors (one process, DDP, DeepSpeed ZeRO-1/2 parameters) are their own "shard": every
index is local.

The gradient protections need global numbers over whole tensors (dot products, norms, `Vᵀ Δ`):
each rank computes its partial result from its own rows (`local_rows` cuts a whole tensor the way
a parameter is sharded) and `sum_over_ranks` / `global_sum` add the partials over the mesh
(one `all_reduce` each), so every rank gets the number one process would.
"""

from __future__ import annotations

import math

import torch

__all__ = ["is_sharded", "local_tensor", "local_span", "to_local_indices", "shard_placement_problem", "local_rows",
           "sum_over_ranks", "global_sum", "add_local"]


def is_sharded(t: torch.Tensor) -> bool:
    """True for a `DTensor` (FSDP2 / tensor-parallel parameter or gradient)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The memory this process holds: the local shard of a `DTensor` (a view: writes reach the parameter)."""
    if is_sharded(t):
        with torch.no_grad():
            return t.to_local()
    return t


def shard_placement_problem(t: torch.Tensor) -> str | None:
    """Why a `DTensor`'s layout cannot be mapped to flat indices (`None` when it can: Shard(0) or Replicate on 1-D)."""
    if not is_sharded(t):
        return None
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(t.placements)
    if t.device_mesh.ndim != 1:
        return f"a {t.device_mesh.ndim}-D device mesh (HSDP or tensor parallel); only a 1-D FSDP2 mesh is supported"
    placement = placements[0]
    if isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0):
        return None
    return f"placement {placement} (only Shard(0), as FSDP2 shards, or Replicate)"


def local_span(t: torch.Tensor) -> tuple[int, int]:
    """(first global flat index, number of entries) of the part of `t` this process holds."""
    if not is_sharded(t):
        return 0, t.numel()
    from torch.distributed.tensor import Shard

    local = local_tensor(t)
    placement = t.placements[0]
    if not (isinstance(placement, Shard) and placement.dim == 0):
        return 0, local.numel()  # replicated: the whole tensor
    row_numel = math.prod(t.shape[1:])
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
        first_row = int(offset[0])
    except (ImportError, TypeError):  # pragma: no cover - private helper moved: torch.chunk layout
        chunk = math.ceil(t.shape[0] / t.device_mesh.size())
        first_row = min(t.shape[0], t.device_mesh.get_local_rank() * chunk)
    return first_row * row_numel, local.numel()


def to_local_indices(t: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of sorted global flat indices `idx` that this process holds.

    Returns:
        `(local_idx, positions)`: flat indices into `local_tensor(t)`, and where they sit in `idx`
        (to pick the matching saved values).
    """
    start, count = local_span(t)
    if start == 0 and count == t.numel():
        return idx, torch.arange(idx.numel(), device=idx.device)
    lo = int(torch.searchsorted(idx, torch.tensor(start, dtype=idx.dtype, device=idx.device)))
    hi = int(torch.searchsorted(idx, torch.tensor(start + count, dtype=idx.dtype, device=idx.device)))
    return idx[lo:hi] - start, torch.arange(lo, hi, device=idx.device)


def _row_sharded(t: torch.Tensor) -> bool:
    """True for a `DTensor` sharded on dim 0 (its partial results must be summed over ranks)."""
    if not is_sharded(t):
        return False
    from torch.distributed.tensor import Shard

    placement = t.placements[0]
    return isinstance(placement, Shard) and placement.dim == 0


def local_rows(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The rows of `whole` (a full tensor shaped as `like`) that this process holds of `like` (a view).

    For a whole or replicated `like`, `whole` itself.
    """
    if not _row_sharded(like):
        return whole
    if tuple(whole.shape) != tuple(like.shape):
        raise ValueError(f"a tensor of shape {tuple(whole.shape)} cannot be cut like a parameter of shape "
                         f"{tuple(like.shape)}")
    start, count = local_span(like)
    row_numel = math.prod(like.shape[1:]) or 1
    first = start // row_numel
    return whole[first: first + count // row_numel]


def sum_over_ranks(partial: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum, in place over the ranks that share `like`, a `partial` computed from this rank's rows of `like`.

    A collective when `like` is sharded on dim 0 (every rank of its mesh must call it, in the same
    order); `partial` unchanged otherwise (a whole or replicated tensor's result is already global).
    """
    if _row_sharded(like):
        torch.distributed.all_reduce(partial, group=like.device_mesh.get_group())
    return partial


def global_sum(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """`Σ partial` over `(like, partial)` pairs, each `partial` computed from this rank's part of `like`.

    The partials of dim-0-sharded tensors are summed over their mesh (one `all_reduce` per mesh, not
    per tensor); those of whole tensors are counted once. All partials must share shape and dtype.
    Every rank must call it with the same sequence of tensors.
    """
    if not parts:
        raise ValueError("`parts` is empty: nothing to sum")
    whole = torch.zeros_like(parts[0][1])
    by_mesh: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for like, partial in parts:
        if _row_sharded(like):
            group = like.device_mesh.get_group()
            acc = by_mesh.setdefault(id(group), (like, torch.zeros_like(partial)))[1]
            acc.add_(partial)
        else:
            whole.add_(partial)
    for like, acc in by_mesh.values():
        whole.add_(sum_over_ranks(acc, like))
    return whole


def add_local(param: torch.Tensor, extra: torch.Tensor) -> None:
    """`param.grad += extra`, `extra` being this rank's part of the whole gradient (creating `.grad` if absent).

    Under FSDP2 the gradient is a `DTensor` sharded like the parameter: `extra` is added to its local
    shard, or becomes one (`DTensor.from_local`) when the step left no gradient.
    """
    if param.grad is not None:
        grad = local_tensor(param.grad)
        grad.add_(extra.to(grad.dtype))
        return
    local = extra.to(param.dtype).clone()
    if is_sharded(param):
        from torch.distributed.tensor import DTensor

        param.grad = DTensor.from_local(local, param.device_mesh, param.placements, run_check=False,
                                        shape=param.shape, stride=param.stride())
    else:
        param.grad = local
