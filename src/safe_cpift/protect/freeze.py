"""Exact freezing of a core region while the rest of the model trains.

Zeroing gradients is not enough to freeze entries: decoupled weight decay (AdamW) and optimizer
momentum still move them. Here the frozen values are saved at train start and written back after
every optimizer step, so they stay bit-identical (`torch.equal`) whatever the optimizer, weight
decay, gradient accumulation, clipping, autocast or gradient checkpointing. Only tensors that hold
core entries are touched, with one `index_copy_` each.

- `CoreFreezeCallback(region)`: a `transformers.TrainerCallback` for any Trainer (TRL SFTTrainer,
  DPOTrainer, ...). It verifies the entries at train end and logs `frozen_entries` and
  `frozen_intact` into `state.log_history`.
- `FrozenEntries(model, region)`: the same for a plain PyTorch loop (`.restore()` after each
  `optimizer.step()`, `.verify()` at the end).
- `restore_region(model, region, source)`: the LoRA path. Entries inside a low-rank product `B·A`
  cannot be frozen one by one, so train the adapters, `merge_and_unload()`, then put the protected
  values back from `source` (the aligned model).

Supported: one process, DDP, FSDP2 (each rank restores the entries of its own dim-0 shard; see
`safe_cpift.sharding`) and DeepSpeed ZeRO-1/2 (the optimizer's fp32 partitions are restored too).
FSDP1, ZeRO-3 and tensor parallelism are refused before the first step
(`safe_cpift.distributed.check_supported`), naming FSDP2 as the way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

from safe_cpift.regions import CoreRegion, normalize_name
from safe_cpift.regions.scoring import TensorSource
from safe_cpift.sharding import is_sharded, local_tensor, shard_placement_problem, to_local_indices

logger = logging.getLogger(__name__)

Source = torch.nn.Module | dict | str | os.PathLike


def _lookup(source: Any, region: CoreRegion) -> Callable[[str], torch.Tensor]:
    """A getter from region tensor names to `source` tensors (wrapped names accepted)."""
    src = TensorSource(source)
    region.check_compatible(src.fingerprint(), check_dtype=False)
    by_norm = {normalize_name(n) or n: n for n in src.names}
    return lambda name: src.get(by_norm[normalize_name(name) or name])


class FrozenEntries:
    """The core entries of `model`, saved so they can be written back after each optimizer step.

    Args:
        model (`torch.nn.Module`): the model being trained. Its names and shapes must match the
            region's fingerprint (DDP `module.`, `torch.compile` and PEFT prefixes are understood).
        region (`CoreRegion`): the entries to keep fixed.
        reference (`nn.Module`, state dict or checkpoint path, *optional*): where the frozen values
            come from. Defaults to the model's values now (on resume: the checkpoint's values).

    Example:
        ```python
        frozen = FrozenEntries(model, region)
        for batch in loader:
            loss = model(**batch).loss; loss.backward()
            optimizer.step(); optimizer.zero_grad()
            frozen.restore()
        assert frozen.verify()
        ```
    """

    def __init__(self, model: torch.nn.Module, region: CoreRegion, *, reference: Source | None = None) -> None:
        from safe_cpift.architectures import check_architecture

        self.region = region
        check_architecture(model)  # quantized or oddly tied weights: a ValueError naming the architecture
        params = region.resolve(model)  # ValueError naming the first differing tensor
        get_ref = _lookup(reference, region) if reference is not None else None
        self._entries: list[tuple[str, torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []
        self._hooks: list[Any] = []
        self.sharded = False
        self.num_entries = 0
        for name, p in params.items():
            idx = region.indices(name)
            if idx.numel() == 0:
                continue
            self.num_entries += idx.numel()
            problem = shard_placement_problem(p)
            if problem is not None:
                raise ValueError(f"cannot freeze `{name}`: its DTensor has {problem}")
            self.sharded |= is_sharded(p)
            local_idx, pos = to_local_indices(p, idx)  # FSDP2: the entries of this rank's rows only
            data = local_tensor(p.detach())
            if get_ref is not None:
                saved = get_ref(name).reshape(-1)[idx][pos].to(device=data.device, dtype=data.dtype)
            else:
                saved = data.reshape(-1)[local_idx.to(data.device)].clone()
            self._entries.append((name, p, local_idx.to(data.device), saved))
        self.local_entries = sum(e[2].numel() for e in self._entries)

    @torch.no_grad()
    def restore(self) -> None:
        """Write the saved values back into the frozen entries (call after `optimizer.step()`)."""
        for _, p, idx, saved in self._entries:
            data = local_tensor(p.data)
            if data.is_contiguous():
                data.view(-1).index_copy_(0, idx, saved)
            else:
                data[torch.unravel_index(idx, data.shape)] = saved
            if getattr(p, "_hp_mapping", None) is not None:
                _restore_master(p._hp_mapping, idx, saved)

    @torch.no_grad()
    def count_changed(self, all_ranks: bool = False) -> int:
        """How many frozen entries differ (bitwise) from their saved values.

        Args:
            all_ranks (`bool`, *optional*, defaults to `False`): with sharded (FSDP2) parameters, sum
                the count over all ranks (a collective: every rank must call it); otherwise this
                rank's entries only.
        """
        changed = 0
        for _, p, idx, saved in self._entries:
            changed += int((_bits(local_tensor(p.detach()).reshape(-1)[idx]) != _bits(saved)).sum())
        if all_ranks and self.sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
            total = torch.tensor([changed], dtype=torch.int64)
            torch.distributed.all_reduce(total)
            changed = int(total.item())
        return changed

    def verify(self, all_ranks: bool = False) -> bool:
        """True when every frozen entry is bit-identical to its saved value (`all_ranks`: see `count_changed`)."""
        return self.count_changed(all_ranks) == 0

    def zero_frozen_grads(self, enable: bool = True) -> None:
        """Zero the frozen entries' gradients as they accumulate, so that gradient clipping ignores them.

        Costs a hook per tensor per backward; restoring after the step is exact without it. The
        difference: with hooks, the clip norm and Adam's moments see zeros for frozen entries;
        without, they see the true gradients (training of free entries is then scaled as if the
        frozen ones were trained too, which matches the paper's masked update only approximately).
        """
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if not enable:
            return
        for _, p, idx, _ in self._entries:
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(_make_zero_hook(idx)))

    def __len__(self) -> int:
        return self.num_entries


def _restore_master(mapping: Any, idx: torch.Tensor, saved: torch.Tensor) -> None:
    """DeepSpeed ZeRO-1/2: write the frozen values into this rank's fp32 master partition too.

    The optimizer updates its own fp32 copy and copies it into the model after each step; restoring
    only the model would let the frozen entries drift in the master copy (and in its checkpoints).
    `mapping` (`param._hp_mapping`) says which flat range of the parameter this rank's partition holds.
    """
    start, numel = mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel
    lo = int(torch.searchsorted(idx, torch.tensor(start, dtype=idx.dtype, device=idx.device)))
    hi = int(torch.searchsorted(idx, torch.tensor(start + numel, dtype=idx.dtype, device=idx.device)))
    if hi > lo:
        hp = mapping.get_hp_fragment().view(-1)
        hp.index_copy_(0, (idx[lo:hi] - start).to(hp.device), saved[lo:hi].to(device=hp.device, dtype=hp.dtype))


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Reinterpret as integers of the same width, so NaN and -0.0 compare bit for bit."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _make_zero_hook(idx: torch.Tensor) -> Callable[[torch.Tensor], None]:
    def hook(p: torch.Tensor) -> None:
        g = p.grad
        if g is None:
            return
        g = local_tensor(g)  # FSDP2: this rank's shard, `idx` are its local indices
        if g.is_contiguous():
            g.view(-1).index_fill_(0, idx, 0)
        else:
            g[torch.unravel_index(idx, g.shape)] = 0

    return hook


class CoreFreezeCallback(TrainerCallback):
    """Keep a core region bit-identical during any `transformers.Trainer` run.

    The frozen values are taken at train start (on resume from a Trainer checkpoint: the
    checkpoint's values, unless `reference` pins the originals) and written back after every
    optimizer step. At train end the entries are checked with `torch.equal` semantics and
    `{"frozen_entries": N, "frozen_intact": bool}` is appended to `state.log_history`.

    Args:
        region (`CoreRegion`): the entries to freeze.
        verify (`bool`, *optional*, defaults to `True`): check and log at train end.
        reference (`nn.Module`, state dict or checkpoint path, *optional*): the true original values
            (e.g. the aligned model). At train start any frozen entry that differs from it is put
            back (with a warning), and the end check is against it.
        zero_frozen_grads (`bool`, *optional*, defaults to `False`): also zero the frozen entries'
            gradients during backward, so `max_grad_norm` clipping ignores them (see
            `FrozenEntries.zero_frozen_grads`; costs a hook per tensor per backward).
        on_violation (`str`, *optional*, defaults to `"raise"`): `"raise"` a RuntimeError or
            `"warn"` (log an error) when a frozen entry changed.

    Example:
        ```python
        region = CoreRegion.load("safety_core")
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, callbacks=[CoreFreezeCallback(region)])
        trainer.train()
        ```
    """

    def __init__(self, region: CoreRegion, verify: bool = True, *, reference: Source | None = None,
                 zero_frozen_grads: bool = False, on_violation: str = "raise") -> None:
        if not isinstance(region, CoreRegion):
            raise TypeError(f"`region` must be a CoreRegion, got {type(region).__name__}")
        if on_violation not in ("raise", "warn"):
            raise ValueError(f"`on_violation` must be 'raise' or 'warn', got {on_violation!r}")
        self.region = region
        self.verify = verify
        self.reference = reference
        self.zero_frozen_grads = zero_frozen_grads
        self.on_violation = on_violation
        self.entries: FrozenEntries | None = None
        self.last_check: dict[str, Any] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: torch.nn.Module | None = None, **kwargs: Any):
        if model is None:
            raise ValueError("CoreFreezeCallback needs the `model` the Trainer passes to callbacks")
        from safe_cpift.distributed import check_supported

        check_supported(model, args, who="CoreFreezeCallback")  # FSDP1 / ZeRO-3 / tensor parallel: refuse clearly
        self.entries = FrozenEntries(model, self.region, reference=self.reference)
        if self.reference is not None:
            moved = self.entries.count_changed()
            if moved:
                logger.warning("%d frozen entries differed from `reference` at train start; restored them", moved)
                self.entries.restore()
        self.entries.zero_frozen_grads(self.zero_frozen_grads)
        logger.info("freezing %d core entries in %d tensors%s", self.entries.num_entries, len(self.entries._entries),
                    f" ({self.entries.local_entries} on this rank's shards)" if self.entries.sharded else "")

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any):
        if self.entries is not None:
            self.entries.restore()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
        if self.entries is None:
            return
        self.entries.zero_frozen_grads(False)
        if not self.verify:
            return
        changed = self.entries.count_changed(all_ranks=True)
        record = {"frozen_entries": self.entries.num_entries, "frozen_intact": changed == 0,
                  "step": getattr(state, "global_step", None)}
        self.last_check = record
        if state is not None:
            state.log_history.append(record)
        if changed:
            msg = f"{changed} of {self.entries.num_entries} frozen core entries changed during training"
            logger.error(msg)
            if self.on_violation == "raise":
                raise RuntimeError(msg + " (another callback or optimizer wrote to them after the restore?)")
        else:
            logger.info("frozen core intact: %d entries bit-identical", self.entries.num_entries)


@torch.no_grad()
def restore_region(model: torch.nn.Module, region: CoreRegion, source: Source) -> int:
    """Copy the region's entries from `source` into `model` (the LoRA path). Returns the count.

    LoRA trains `W + B·A`; after `merge_and_unload()` every entry of `W` may have moved, and
    single entries of a low-rank product cannot be frozen during training. Put the protected
    values back afterwards:

    ```python
    merged = peft_model.merge_and_unload()
    restore_region(merged, safety_core, source="aligned_model_dir")  # or the aligned nn.Module
    ```

    Args:
        model (`nn.Module`): the model to write into (names and shapes must match the region).
        region (`CoreRegion`): the entries to restore.
        source (`nn.Module`, state dict or checkpoint path): where the values come from; read
            tensor by tensor, so a checkpoint directory is never loaded whole.
    """
    params = region.resolve(model)
    get = _lookup(source, region)
    n = 0
    for name, p in params.items():
        idx = region.indices(name)
        if idx.numel() == 0:
            continue
        values = get(name).reshape(-1)[idx].to(device=p.device, dtype=p.dtype)
        data = p.data
        if data.is_contiguous():
            data.view(-1).index_copy_(0, idx.to(p.device), values)
        else:
            data[torch.unravel_index(idx.to(p.device), data.shape)] = values
        n += idx.numel()
    logger.info("restored %d core entries from %s", n, getattr(source, "__class__", type(source)).__name__)
    return n
