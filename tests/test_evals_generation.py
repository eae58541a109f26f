"""Batched greedy chat generation: order, batching invariance, eos, modes and errors."""

import pytest
import torch
from conftest import make_tiny_llama

from safe_cpift.evals.generation import build_chat_prompts, generate_responses

PROMPTS = ["what is 1 and 2 ?", "yes", "sorry the a what is the help . no", "is 3 ?", "the", "what is the a 9 8 7 ?"]


@pytest.fixture(scope="module")
def model():
    m = make_tiny_llama(seed=0)
    m.train()
    return m


def test_batched_equals_one_by_one_and_order_is_kept(model, word_tokenizer):
    batched = generate_responses(model, word_tokenizer, PROMPTS, max_new_tokens=6, batch_size=4, progress=False)
    single = [generate_responses(model, word_tokenizer, [p], max_new_tokens=6, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert all(isinstance(r, str) and r == r.strip() for r in batched)
    assert len(set(batched)) > 1  # different prompts give different replies on this seed
    assert model.training  # mode restored


def _force(model, token_ids):
    """Make the model emit `token_ids[k]` at generation step k (then the last one forever)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        out = torch.full_like(output, -1e9)
        out[..., token_ids[min(calls["n"], len(token_ids) - 1)]] = 0.0
        calls["n"] += 1
        return out

    return model.lm_head.register_forward_hook(hook)


def test_reply_is_the_new_text_only_and_stops_at_eos(model, word_tokenizer):
    yes, no, eos = (word_tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no", "<eos>"))
    handle = _force(model, [yes, no, yes])
    try:
        assert generate_responses(model, word_tokenizer, ["what is 1 ?"], max_new_tokens=5, progress=False) == [
            "yes no yes yes yes"]
    finally:
        handle.remove()
    handle = _force(model, [no, eos, yes])
    try:
        assert generate_responses(model, word_tokenizer, ["what is 1 ?"], max_new_tokens=5, progress=False) == ["no"]
    finally:
        handle.remove()


def test_chat_template_and_system_prompt(word_tokenizer):
    (text,) = build_chat_prompts(word_tokenizer, ["hi"], system_prompt="be nice")
    assert text == "system : be nice . user : hi . assistant : "
    assert build_chat_prompts(word_tokenizer, ["hi"], chat_template=False) == ["hi"]


def test_errors(model, word_tokenizer):
    with pytest.raises(TypeError, match="`prompts`"):
        generate_responses(model, word_tokenizer, "one prompt")
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        generate_responses(model, word_tokenizer, ["a"], max_new_tokens=0)
    with pytest.raises(ValueError, match="`batch_size`"):
        generate_responses(model, word_tokenizer, ["a"], batch_size=0)
    assert generate_responses(model, word_tokenizer, []) == []
    tok = word_tokenizer.__class__(tokenizer_object=word_tokenizer.backend_tokenizer, pad_token="<pad>",
                                   eos_token="<eos>")
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        generate_responses(model, tok, ["a"])
