"""Tiny random-weight models built locally from the configs of the architectures users bring.

Each keeps what makes its family different, at test size: Qwen2 ties the input and output
embeddings (as Qwen2.5-0.5B-Instruct) and has q/k/v biases; Mistral and Llama-3 use grouped-query
attention (fewer key/value heads than query heads); Gemma-2 ties embeddings and adds pre/post
feed-forward norms and logit soft-capping; Phi-3 fuses `qkv_proj` and `gate_up_proj`.
Importable from tests (`from scripts.archs import ...`) and from torchrun scripts (`import archs`).
"""

from __future__ import annotations

import torch

ARCHS = ("qwen2", "mistral", "llama3", "gemma2", "phi3")
TIED = {"qwen2": True, "mistral": False, "llama3": False, "gemma2": True, "phi3": False}


def tiny_arch(arch: str, seed: int = 0, layers: int = 2, hidden: int = 32, vocab: int = 64):
    """A tiny random model of family `arch` (one of `ARCHS`), weights seeded without the global RNG."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                  num_attention_heads=4, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                  bos_token_id=1)
    if arch == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True,
                                                   use_sliding_window=False))
    elif arch == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**common, num_key_value_heads=2, tie_word_embeddings=False,
                                                       sliding_window=None))
    elif arch == "llama3":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, num_key_value_heads=1, tie_word_embeddings=False,
                                                   rope_theta=500000.0))
    elif arch == "gemma2":
        model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, num_key_value_heads=2, head_dim=8,
                                                     tie_word_embeddings=True, sliding_window=16))
    elif arch == "phi3":
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**common, num_key_value_heads=4, tie_word_embeddings=False))
    else:
        raise ValueError(f"unknown test architecture {arch!r}; one of {ARCHS}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied tensors appear once here
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen) + (0.0 if arch == "gemma2" else 1.0))
    return model


def perturbed(model, seed: int, scale: float = 0.01):
    """A copy of `model` with every tensor moved by seeded noise (a stand-in for a fine-tuned model)."""
    import copy

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return out
