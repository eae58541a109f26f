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

from safe_cpift.io import CheckpointReader, is_checkpoint, open_checkpoint

logger = logging.getLogger(__name__)

ModelSource = str | os.PathLike


def _check_source(source: ModelSource) -> str:
    text = str(source)
    local = Path(text).expanduser()
    if local.exists():
        if local.is_dir() and not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{local} has no config.json; pass a `save_pretrained` directory or a hub id"
            )
        return str(local)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"no model directory at {text} (and it does not look like a hub id)")
    return text


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
        trust_remote_code (`bool`, *optional*, defaults to `False`): run the repository's own code.
        device (`str`, *optional*, defaults to `"cpu"`).
    """
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    resolved = _check_source(source)
    logger.info("loading model %s (dtype=%s)", resolved, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        resolved, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model.to(device)


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer saved with a model (local directory or hub id)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_check_source(source), trust_remote_code=trust_remote_code)
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
        return x
    if isinstance(x, (str, os.PathLike)):
        if is_checkpoint(x):
            return open_checkpoint(x)
        raise FileNotFoundError(f"no safetensors checkpoint at {x}")
    raise TypeError(f"expected a model, a state dict or a checkpoint path, got {type(x).__name__}")
