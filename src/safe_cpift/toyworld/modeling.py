"""The tiny Llama of the world and the plain-PyTorch loops that pretrain and align it.

Plain loops (not the Trainer) because they are a few times faster for a model this small and
exactly deterministic for a seed on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from safe_cpift.runtime import scoped_threads, seeded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """Architecture of the tiny Llama."""

    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    max_positions: int = 256


def make_model(shape: ModelShape, vocab_size: int, pad_id: int, eos_id: int, seed: int):
    """A randomly initialised `LlamaForCausalLM` (tied embeddings), deterministic for `seed`."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads, max_position_embeddings=shape.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None, dtype=torch.float32,
    )
    with seeded(seed):
        model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False)
    return model


def pack_documents(tokenizer, documents: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate documents (each followed by eos) and cut into rows of `seq_len` tokens."""
    ids: list[int] = []
    for doc in documents:
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def encode_chats(tokenizer, examples: list[list[dict]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and assistant-only labels (-100 elsewhere) for chat `messages` lists."""
    out = []
    for messages in examples:
        enc = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = list(enc["input_ids"])[:max_length]
        mask = list(enc["assistant_masks"])[:max_length]
        out.append((ids, [t if m else -100 for t, m in zip(ids, mask, strict=False)]))
    return out


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(model, batches, steps: int, lr: float, desc: str, seed: int, num_threads: int | None) -> float:
    with scoped_threads(num_threads), seeded(seed):
        return _train_loop(model, batches, steps, lr, desc)


def _train_loop(model, batches, steps: int, lr: float, desc: str) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    start = time.perf_counter()
    ema = None
    bar = tqdm(range(steps), desc=desc, unit="step", leave=False)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, max(1, steps // 20))
        opt.zero_grad(set_to_none=True)
        loss = sum(model(input_ids=i, attention_mask=a, labels=y).loss for i, a, y in batches(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{ema:.3f}")
    model.eval()
    seconds = time.perf_counter() - start
    logger.info("%s: %d steps in %.1fs, final loss %.3f", desc, steps, seconds, ema or float("nan"))
    return seconds


def pretrain(model, rows: torch.Tensor, *, steps: int, batch_size: int, lr: float, seed: int,
             num_threads: int | None = None, extra_rows: torch.Tensor | None = None,
             extra_batch_size: int = 0) -> float:
    """Next-token pretraining on packed `rows`; returns the measured seconds.

    With `extra_rows` (e.g. packed chat-formatted safety examples), `extra_batch_size` of each
    step's `batch_size` rows are drawn from them instead of `rows`.
    """
    gen = torch.Generator().manual_seed(seed)
    if extra_rows is None or not extra_batch_size:
        extra_rows, extra_batch_size = None, 0
    elif not 0 < extra_batch_size < batch_size:
        raise ValueError(f"`extra_batch_size` must be in [1, {batch_size - 1}], got {extra_batch_size}")

    def batches(_step):
        idx = torch.randint(0, rows.shape[0], (batch_size - extra_batch_size,), generator=gen)
        x = rows[idx]
        if extra_rows is not None:
            x = torch.cat([x, extra_rows[torch.randint(0, extra_rows.shape[0], (extra_batch_size,), generator=gen)]])
        return [(x, torch.ones_like(x), x)]

    return _train(model, batches, steps, lr, "pretraining", seed, num_threads)


def sft(model, encoded: list[tuple[list[int], list[int]]], *, steps: int, batch_size: int, lr: float,
        seed: int, pad_id: int, replay_rows: torch.Tensor | None = None, replay_batch_size: int = 8,
        num_threads: int | None = None) -> float:
    """Assistant-only SFT on `encoded` (ids, labels) pairs, shuffled epochs; returns measured seconds.

    With `replay_rows` (packed pretraining rows) each step adds the LM loss of `replay_batch_size`
    of them, which keeps the pretraining knowledge that refusals of unseen requests rely on.
    """
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []

    def batches(_step):
        nonlocal order
        if len(order) < batch_size:
            order += torch.randperm(len(encoded), generator=gen).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        width = max(len(encoded[i][0]) for i in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        lab = torch.full_like(ids, -100)
        for r, i in enumerate(chosen):
            a, b = encoded[i]
            ids[r, : len(a)] = torch.tensor(a)
            att[r, : len(a)] = 1
            lab[r, : len(b)] = torch.tensor(b)
        out = [(ids, att, lab)]
        if replay_rows is not None:
            x = replay_rows[torch.randint(0, replay_rows.shape[0], (replay_batch_size,), generator=gen)]
            out.append((x, torch.ones_like(x), x))
        return out

    return _train(model, batches, steps, lr, "aligning", seed, num_threads)
