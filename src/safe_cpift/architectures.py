"""Which model architectures the protections handle, and a clear error for those they cannot.

Regions, freezing, fusion and the guard address a model as a set of named floating-point tensors,
each entry by its flat index. That holds for the decoder-only causal LMs of transformers (Llama,
Llama-3 and Mistral with grouped-query attention, Qwen2 with tied embeddings, Gemma-2, Phi-3 with
fused `qkv_proj` / `gate_up_proj`, ...) as long as:

- every weight is floating point (a quantized checkpoint, e.g. bitsandbytes 4/8-bit, packs several
  entries into one integer and has no per-entry address);
- tensors that share memory are plain aliases: the same storage, offset, shape and strides under
  several names (tied input/output embeddings). They are one tensor: counted, frozen, fused and
  saved once, under the first name (the one `named_parameters()` and `save_pretrained` keep). A
  tie through a transposed or sliced view would make one entry two different flat indices.

`check_architecture(model)` checks both and returns what it found (`ArchitectureInfo`);
`CoreFreezeCallback`, `FrozenEntries` and the pipeline's model loading call it, so an architecture
that cannot be handled fails before the first step with a `ValueError` naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["ArchitectureInfo", "check_architecture", "describe_architecture"]


@dataclass(frozen=True)
class ArchitectureInfo:
    """What `check_architecture` found.

    Args:
        name (`str`): `config.model_type` and class, e.g. `"qwen2 (Qwen2ForCausalLM)"`.
        num_tensors (`int`): distinct weight tensors (a tied pair counts once).
        tied (`dict[str, list[str]]`): kept name -> the other names of the same tensor.
        num_layers (`int | None`): decoder layers found by name (`layers.N.`), `None` when none.
    """

    name: str
    num_tensors: int
    tied: dict[str, list[str]] = field(default_factory=dict)
    num_layers: int | None = None


def describe_architecture(model: Any) -> str:
    """`"<model_type> (<ClassName>)"`, or the class name alone for a model without a config."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    cls = type(model).__name__
    return f"{model_type} ({cls})" if model_type else cls


def _local(t: torch.Tensor) -> torch.Tensor:
    to_local = getattr(t, "to_local", None)  # DTensor (FSDP2): the storage is this rank's shard
    return to_local() if callable(to_local) else t


def check_architecture(model: torch.nn.Module) -> ArchitectureInfo:
    """Raise a `ValueError` naming the architecture when its weights cannot be addressed entry by entry.

    Args:
        model (`torch.nn.Module`): the model (wrapped names from DDP, FSDP or PEFT are fine).

    Returns:
        `ArchitectureInfo`: the architecture's name, distinct tensors, tied aliases and layers.

    Raises:
        `ValueError`: a non-floating (quantized) weight, or tensors that share memory without being
            plain aliases of each other.
    """
    from safe_cpift.regions.scoring import EXCLUDED_SUFFIXES
    from safe_cpift.regions.select import layer_index

    arch = describe_architecture(model)
    by_storage: dict[tuple[Any, ...], str] = {}
    storages: dict[int, list[tuple[int, int, str]]] = {}
    tied: dict[str, list[str]] = {}
    seen: dict[int, str] = {}
    layers: set[int] = set()
    storage_aliases = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if name.endswith(EXCLUDED_SUFFIXES):
            continue
        if not p.dtype.is_floating_point:
            raise ValueError(
                f"the {arch} model has a non-floating-point weight `{name}` ({str(p.dtype).removeprefix('torch.')}, "
                f"{type(p).__name__}): quantized weights pack several entries into one value, so core regions, "
                "freezing and fusion cannot address them; load the model in float32 or bfloat16 (no 4/8-bit "
                "quantization) and train LoRA adapters on it if memory is short"
            )
        if (idx := layer_index(name)) is not None:
            layers.add(idx)
        if id(p) in seen:  # the same Parameter object under two names: a plain tie
            tied.setdefault(seen[id(p)], []).append(name)
            continue
        seen[id(p)] = name
        local = _local(p.detach())
        if local.numel() == 0 or local.device.type == "meta":
            continue
        storage = local.untyped_storage().data_ptr()
        key = (storage, local.storage_offset(), tuple(local.shape), tuple(local.stride()), local.dtype)
        if key in by_storage:  # two Parameter objects over the same memory, same view: still a plain tie
            tied.setdefault(by_storage[key], []).append(name)
            storage_aliases += 1
            continue
        start = local.storage_offset() * local.element_size()
        end = start + (1 + sum((n - 1) * st for n, st in zip(local.shape, local.stride(), strict=True))) * local.element_size()
        other = next((o for lo, hi, o in storages.get(storage, ()) if lo < end and start < hi), None)
        if other is not None:  # views into one flat buffer (FSDP1 `use_orig_params`) are fine when disjoint
            raise ValueError(
                f"the {arch} model shares memory between `{other}` and `{name}` through different views "
                "(a transposed, sliced or reshaped tie): one entry would have two flat indices, so core "
                "regions, freezing and fusion cannot handle this architecture; untie the weights "
                "(`config.tie_word_embeddings=False` and a copy) or ask for support with the model's name"
            )
        by_storage[key] = name
        storages.setdefault(storage, []).append((start, end, name))
    distinct = len(seen) - storage_aliases
    info = ArchitectureInfo(name=arch, num_tensors=distinct, tied=tied,
                            num_layers=(max(layers) + 1) if layers else None)
    if tied:
        logger.info("%s: tied tensors counted once: %s", arch,
                    ", ".join(f"{k} = {', '.join(v)}" for k, v in tied.items()))
    return info
