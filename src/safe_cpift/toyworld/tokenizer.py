"""Byte-level BPE tokenizer of the tiny world, with a chat template usable by TRL.

Byte-level: any UTF-8 text encodes and decodes exactly (no unknown token). The chat template wraps
assistant content in ``{% generation %}`` markers so ``SFTConfig(assistant_only_loss=True)`` works.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

PAD, EOS, USER, ASSISTANT, SYSTEM = "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = (PAD, EOS, USER, ASSISTANT, SYSTEM)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it with pad/eos tokens and the chat template.

    Args:
        texts (`Iterable[str]`): training text (the world's corpus, prompts and answers).
        vocab_size (`int`, *optional*, defaults to `1024`): target vocabulary incl. 256 bytes + specials.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` must be >= {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` as a `PreTrainedTokenizerFast` with the world's special tokens."""
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=None, unk_token=None,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM], padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    out.chat_template = CHAT_TEMPLATE
    out.model_max_length = 256
    return out
