"""Loading models and tokenizers from local directories or hub ids, safely.

Weights load through safetensors only (`use_safetensors=True`) and remote code runs only when the
user asks for it with `trust_remote_code=True`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from safe_cpift.errors import MissingInputError, UserError
from safe_cpift.io import CheckpointReader, open_checkpoint

logger = logging.getLogger(__name__)

ModelSource = str | os.PathLike


def _check_source(source: ModelSource) -> str:
    text = str(source)
    local = Path(text).expanduser()
    if local.exists():
        if local.is_dir() and not (local / "config.json").is_file():
            raise MissingInputError(
                f"{local} has no config.json; pass a `save_pretrained` directory or a hub id"
            )
        return str(local)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise MissingInputError(f"no model directory at {text} (and it does not look like a hub id)")
    return text


def check_model_dir(source: ModelSource, *, weights: bool = True) -> str:
    """Check a model before transformers loads it: a local directory must hold all its safetensors weights.

    Hub ids pass through unchecked (transformers resolves them). Returns the source as a string.

    Args:
        source (`str` or `os.PathLike`): local directory or hub id.
        weights (`bool`, *optional*, defaults to `True`): also check the weights (`False` for a
            tokenizer directory).

    Raises:
        `MissingInputError`: no such directory, or no config.json in it.
        `MissingWeightsError`: pickle weights only (the message says how to convert them), or a shard
            named by the index is missing (the message names it).
        `CheckpointError`: a weight file that is not readable safetensors.
    """
    resolved = _check_source(source)
    if weights and Path(resolved).is_dir():
        open_checkpoint(resolved)  # resolves every shard and reads each header; nothing is loaded
    return resolved


def from_hub_or_dir(loader: Any, source: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source, **kwargs)`, with transformers' complaints about the model as `UserError`s.

    An `OSError` (a hub id that cannot be fetched, a config.json that is not JSON) or a `ValueError` (an
    architecture this transformers does not know, a model that needs its own code) raised while reading
    `source` becomes a `UserError` naming the model, keeping transformers' first line and adding the
    fix; the original error stays chained (the CLI's `--debug` shows it).
    """
    from safe_cpift.errors import is_user_error

    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if is_user_error(err):
            raise
        text = str(err).strip()
        first = text.splitlines()[0] if text else type(err).__name__
        if not Path(source).exists():
            where, fix = "from the Hugging Face Hub", ("check the id and your connection (HF_HUB_OFFLINE=1 uses only "
                                                       "the local cache), or pass a local directory")
        elif "trust_remote_code" in text:
            where, fix = "", ("safe-cpift runs a model's own code only when asked: set `trust_remote_code: true` in "
                              "the recipe if you trust it")
        else:
            where, fix = "", ("check its files (re-save it with `save_pretrained`), or update transformers if the "
                              "architecture is newer than it")
        raise UserError(f"cannot load `{source}`{' ' + where if where else ''}: {first}\n{fix}") from err


def load_causal_lm(
    source: ModelSource,
    *,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    device: str = "cpu",
) -> Any:
    """Load a causal LM from a local `save_pretrained` directory or a hub id.

    Args:
        source (`str` or `os.PathLike`): local directory or hub id (e.g. `Qwen/Qwen2.5-0.5B-Instruct`).
        dtype (`torch.dtype` or `str`, *optional*, defaults to `torch.float32`):
            transformers 5 keeps the checkpoint's dtype unless told; float32 is what CPU training needs.
            `"auto"` keeps the checkpoint's own dtype.
        trust_remote_code (`bool`, *optional*, defaults to `False`): run the repository's own code.
        device (`str`, *optional*, defaults to `"cpu"`).
    """
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    resolved = check_model_dir(source)
    logger.info("loading model %s (dtype=%s)", resolved, dtype)
    model = from_hub_or_dir(
        AutoModelForCausalLM, resolved, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.to(device)


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer saved with a model (local directory or hub id)."""
    from transformers import AutoTokenizer

    tok = from_hub_or_dir(AutoTokenizer, _check_source(source), trust_remote_code=trust_remote_code)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def as_state_dict(x: Any) -> Mapping[str, torch.Tensor] | CheckpointReader:
    """A name → tensor mapping from a model, a state dict, or a safetensors checkpoint path.

    Checkpoint paths give a lazy `CheckpointReader` (tensors are read on access). For modules the
    named parameters are used (buffers such as rotary `inv_freq` are not weights a region can hold).
    """
    if isinstance(x, torch.nn.Module):
        return {name: p.detach() for name, p in x.named_parameters()}
    if isinstance(x, CheckpointReader):
        return x
    if isinstance(x, Mapping):
        for name, value in x.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state dict entry `{name}` is a {type(value).__name__}, not a tensor")
        return drop_tied_aliases(x)
    if isinstance(x, (str, os.PathLike)):
        return open_checkpoint(x)
    raise TypeError(f"expected a model, a state dict or a checkpoint path, got {type(x).__name__}")


def drop_tied_aliases(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """`state_dict` without the second and later names of tied tensors (one storage, several names).

    `model.state_dict()` of a model with tied embeddings lists the shared matrix twice
    (`model.embed_tokens.weight` and `lm_head.weight`); `named_parameters()` and `save_pretrained`
    keep it once, under the first name. The first name in the mapping's order is kept.
    """
    seen: dict[tuple, str] = {}
    dropped = []
    for name, t in state_dict.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            dropped.append(name)
        else:
            seen[key] = name
    if not dropped:
        return state_dict
    logger.debug("tied tensors counted once: dropped %s", dropped)
    return {n: t for n, t in state_dict.items() if n not in set(dropped)}
