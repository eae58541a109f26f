"""`safe_cpift.training`: CPU-safe SFTConfig defaults and a measured train_sft on a tiny model."""

import pytest
import torch
from datasets import Dataset

from safe_cpift.toyworld.tokenizer import train_tokenizer
from safe_cpift.training import TrainStats, sft_config, supports_assistant_mask, train_sft


@pytest.fixture(scope="module")
def chat_tokenizer():
    texts = ["copy: a b c", "a b c", "flip: a b c", "c b a", "Sorry, I can't help with that."] * 20
    return train_tokenizer(texts, vocab_size=300)


def _tiny(tok):
    from safe_cpift.toyworld.modeling import ModelShape, make_model

    return make_model(ModelShape(32, 1, 2, 64, 64), len(tok), tok.pad_token_id, tok.eos_token_id, seed=0)


def test_sft_config_is_cpu_safe(tmp_path, chat_tokenizer, word_tokenizer):
    cfg = sft_config(str(tmp_path), chat_tokenizer)
    assert cfg.use_cpu and not cfg.bf16 and not cfg.gradient_checkpointing
    assert cfg.save_strategy == "no" and cfg.report_to in ([], "none", ["none"])
    assert cfg.assistant_only_loss and supports_assistant_mask(chat_tokenizer)
    assert not sft_config(str(tmp_path), word_tokenizer).assistant_only_loss  # no generation markers
    assert sft_config(str(tmp_path), chat_tokenizer, learning_rate=0.5).learning_rate == 0.5
    with pytest.raises(ValueError, match="`packing_strategy='wrapped'`"):
        sft_config(str(tmp_path), packing=True)


def test_train_sft_learns_and_reports(tmp_path, chat_tokenizer):
    tok = chat_tokenizer
    model = _tiny(tok)
    rows = [[{"role": "user", "content": f"copy: {x}"}, {"role": "assistant", "content": x}]
            for x in ("a b c", "c b a", "b a c", "a c b")] * 8
    ds = Dataset.from_list([{"messages": m, "extra": 1} for m in rows])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    msgs = rows[0]
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = torch.tensor([enc["input_ids"]])
    labels = torch.tensor([[t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=False)]])
    loss0 = model(input_ids=ids, labels=labels).loss.item()
    stats = train_sft(model, tok, ds, output_dir=str(tmp_path / "o"), max_steps=30, learning_rate=5e-3, batch_size=8)
    assert isinstance(stats, TrainStats)
    assert stats.steps == 30 and stats.examples_seen == 240 and stats.train_seconds > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model(input_ids=ids, labels=labels).loss.item() < loss0 * 0.5


def test_train_sft_rejects_bad_arguments(tmp_path, chat_tokenizer):
    ds = Dataset.from_list([{"text": "x"}])
    with pytest.raises(ValueError, match="exactly one of `max_steps`"):
        train_sft(None, chat_tokenizer, ds, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="`messages`"):
        train_sft(None, chat_tokenizer, ds, output_dir=str(tmp_path), max_steps=1)
