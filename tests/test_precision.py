"""Training precision: bf16 requests keep float32 master weights, so no small update is lost."""

import pytest
import torch

from safe_cpift.precision import BYTES_PER_PARAMETER, memory_gib, resolve_precision
from safe_cpift.training import make_sft_trainer, train_sft


def _chat_rows(n: int = 16):
    from datasets import Dataset

    return Dataset.from_list([{"messages": [
        {"role": "user", "content": f"what is {i % 10} and {(i * 3) % 10} ?"},
        {"role": "assistant", "content": f"the {(i + i * 3) % 10} yes"}]} for i in range(n)])


def _moved_fraction(model, tok, tmp_path, **kwargs) -> float:
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    train_sft(model, tok, _chat_rows(), output_dir=str(tmp_path), max_steps=4, learning_rate=1e-5, batch_size=8,
              lr_scheduler_type="constant", warmup_steps=0, **kwargs)
    moved = sum(int((p.detach().float() != before[n]).sum()) for n, p in model.named_parameters())
    return moved / sum(p.numel() for p in model.parameters())


def test_bf16_request_moves_as_many_entries_as_fp32(tiny_qwen2, qwen_tokenizer, tmp_path):
    tok = qwen_tokenizer
    fp32 = _moved_fraction(tiny_qwen2(vocab=len(tok)), tok, tmp_path / "fp32")
    model = tiny_qwen2(vocab=len(tok))
    trainer = make_sft_trainer(model, tok, _chat_rows(), output_dir=str(tmp_path / "x"), max_steps=1, bf16=True)
    assert trainer.precision == "bf16-mixed" and trainer.args.bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    mixed = _moved_fraction(model, tok, tmp_path / "mixed", bf16=True)
    assert fp32 > 0.95
    assert abs(mixed - fp32) < 0.01, (mixed, fp32)


def test_pure_bf16_weights_are_refused(tiny_qwen2, qwen_tokenizer, tmp_path):
    model = tiny_qwen2(vocab=len(qwen_tokenizer), dtype=torch.bfloat16)
    for kwargs in ({}, {"bf16": True}):
        with pytest.raises(ValueError, match="drops most small updates"):
            train_sft(model, qwen_tokenizer, _chat_rows(), output_dir=str(tmp_path), max_steps=1, **kwargs)


def test_bf16_sr_uses_torchao_or_says_how_to_install(tiny_qwen2, qwen_tokenizer, tmp_path):
    model = tiny_qwen2(vocab=len(qwen_tokenizer), dtype=torch.bfloat16)
    try:
        import torchao.optim  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'safe-cpift\[bf16\]'"):
            make_sft_trainer(model, qwen_tokenizer, _chat_rows(), output_dir=str(tmp_path), max_steps=1,
                             precision="bf16-sr")
        return
    frac = _moved_fraction(model, qwen_tokenizer, tmp_path, precision="bf16-sr")
    assert frac > 0.9  # stochastic rounding moves entries whose update is below one bf16 ulp too (98.6% measured)


def test_precision_settings_are_checked():
    assert resolve_precision(None, {"bf16": True}) == "bf16-mixed"
    assert resolve_precision("auto", {}) == "fp32"
    with pytest.raises(ValueError, match="remove `bf16: true`"):
        resolve_precision("bf16-sr", {"bf16": True})
    with pytest.raises(ValueError, match="`bf16: false`"):
        resolve_precision("bf16-mixed", {"bf16": False})
    with pytest.raises(ValueError, match="`precision` must be one of"):
        resolve_precision("bf16", {})
    assert BYTES_PER_PARAMETER == {"fp32": 16, "bf16-mixed": 16, "bf16-sr": 8}
    assert memory_gib(2**30, "bf16-sr") == 8.0


def test_what_the_refusal_prevents(tiny_qwen2, qwen_tokenizer, tmp_path, monkeypatch):
    """bf16 weights with a plain AdamW (the old recipes) leave most entries where they were."""
    import safe_cpift.training as training

    monkeypatch.setattr(training, "check_model_dtype", lambda model, precision: None)
    pure = _moved_fraction(tiny_qwen2(vocab=len(qwen_tokenizer), dtype=torch.bfloat16), qwen_tokenizer, tmp_path)
    assert pure < 0.5
