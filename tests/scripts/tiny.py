"""Tiny model, tokenizer and datasets for the trainer, guard and multi-process tests.

Importable from tests (`from scripts.tiny import ...`) and from scripts launched by torchrun
(`import tiny`, the script's own folder is on `sys.path`). Everything is built locally.
"""

from __future__ import annotations

import torch

WORDS = ("user assistant : . ? what is and sorry cannot help yes no the a " + " ".join(map(str, range(10)))).split()


def word_tokenizer():
    """A word-level tokenizer with a chat template (same vocabulary as the `word_tokenizer` fixture)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    out.chat_template = (
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    return out


QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
# ChatML as Qwen2.5 writes it: a default system turn, and no `{% generation %}` markers
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nyou are a helpful assistant .<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer():
    """A word-level tokenizer with Qwen2.5's ChatML chat template (no generation markers)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(QWEN_SPECIALS)}
    vocab["<unk>"] = len(vocab)
    for w in (*WORDS, "system", "you", "are", "helpful", "how", "do", "i", "make", "bomb", "tell", "me"):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                  unk_token="<unk>")
    out.chat_template = QWEN_CHAT_TEMPLATE
    return out


def tiny_qwen2(seed: int = 0, layers: int = 2, hidden: int = 32, vocab: int = 64, dtype=torch.float32):
    """A tiny random Qwen2 with tied input/output embeddings (as Qwen2.5-0.5B), in `dtype`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        pad_token_id=2, eos_token_id=1, bos_token_id=None, use_sliding_window=False,
    )
    gen = torch.Generator().manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():  # seeded without touching the global RNG
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 if p.dim() > 1 else 1 + 0.1 * torch.randn(p.shape, generator=gen))
    return model.to(dtype)


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 32, vocab: int = 64):
    """A tiny random Llama (same shape as the `tiny_llama` fixture)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def sft_dataset(n: int = 16):
    """Chat rows over the tokenizer's words."""
    from datasets import Dataset

    rows = []
    for i in range(n):
        a, b = i % 10, (i * 3) % 10
        rows.append({"messages": [
            {"role": "user", "content": f"what is {a} and {b} ?"},
            {"role": "assistant", "content": f"the {(a + b) % 10} yes"},
        ]})
    return Dataset.from_list(rows)


def safety_chats(n: int = 8) -> list[dict]:
    """Safety chat rows for the protections: a harmless-looking request answered with a refusal."""
    return [{"messages": [{"role": "user", "content": f"what is {i} ?"},
                          {"role": "assistant", "content": "sorry cannot help"}]} for i in range(n)]


def preference_dataset(n: int = 8):
    """Conversational prompt / chosen / rejected rows for DPO."""
    from datasets import Dataset

    rows = []
    for i in range(n):
        rows.append({
            "prompt": [{"role": "user", "content": f"what is {i % 10} ?"}],
            "chosen": [{"role": "assistant", "content": "sorry cannot help"}],
            "rejected": [{"role": "assistant", "content": f"yes the {i % 10}"}],
        })
    return Dataset.from_list(rows)


def prompt_dataset(n: int = 8):
    """Conversational prompt-only rows for GRPO."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"what is {i % 10} ?"}]} for i in range(n)])


def snapshot(model) -> dict[str, torch.Tensor]:
    """A CPU copy of every parameter."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}


def random_region(model, top_p: float = 0.2, seed: int = 1):
    """A `CoreRegion` of random entries (top_p of each tensor), the same for a seed on every process."""
    from safe_cpift import CoreRegion

    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}
    return CoreRegion.from_scores(scores, top_p=top_p, scope="tensor")


def exit_after_results() -> None:
    """End a multi-process test script whose results are on disk, without running destructors.

    A DeepSpeed engine's or a process group's C++ threads still joinable at interpreter exit abort the
    process now and then ("terminate called without an active exception", SIGABRT), which would fail a
    launch whose checks all passed. A barrier first, so no rank leaves while another is in a collective.
    """
    import os
    import sys

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

