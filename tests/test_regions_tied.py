"""Regions from state dicts of a model with tied embeddings count the shared matrix once."""

import torch

from safe_cpift import CoreRegion


def _pair(tiny_qwen2, vocab):
    base, tuned = tiny_qwen2(vocab=vocab), tiny_qwen2(vocab=vocab)
    tuned.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
    assert tuned.lm_head.weight.data_ptr() == tuned.model.embed_tokens.weight.data_ptr()
    return base, tuned


def test_state_dicts_and_modules_give_the_same_region(tiny_qwen2, qwen_tokenizer, tmp_path):
    base, tuned = _pair(tiny_qwen2, len(qwen_tokenizer))
    sd_base, sd_tuned = base.state_dict(), tuned.state_dict()
    assert "lm_head.weight" in sd_base  # the shared matrix is listed twice
    from_sd = CoreRegion.from_update(sd_base, sd_tuned, top_p=0.05, progress=False)
    from_modules = CoreRegion.from_update(base, tuned, top_p=0.05, progress=False)
    total = sum(p.numel() for p in base.parameters())  # unique parameters
    assert from_sd.num_total == total
    assert from_sd.num_selected == round(0.05 * total)
    assert abs(from_sd.fraction - from_modules.fraction) < 1e-12
    assert from_sd.names() == from_modules.names()
    for name in from_sd.names():
        assert torch.equal(from_sd.indices(name), from_modules.indices(name))
    base.save_pretrained(tmp_path / "base")  # tied: lm_head.weight is not saved
    from_sd.check_compatible(tmp_path / "base")
    from_saved = CoreRegion.from_update(tmp_path / "base", sd_tuned, top_p=0.05, progress=False)
    assert from_saved.num_selected == from_sd.num_selected
