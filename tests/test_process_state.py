"""Library calls leave process-wide state alone: the global RNG, torch threads, denormal flushing."""

import torch

from safe_cpift.protect.guard import SafetyGuardCallback
from safe_cpift.protect.guard_probe import RefusalProbe
from safe_cpift.training import train_sft


def _rows():
    from datasets import Dataset

    return Dataset.from_list([{"messages": [{"role": "user", "content": f"what is {i} ?"},
                                            {"role": "assistant", "content": f"the {i}"}]} for i in range(8)])


def test_probe_leaves_the_global_rng_alone(tiny_qwen2, qwen_tokenizer):
    model = tiny_qwen2(vocab=len(qwen_tokenizer))
    probe = RefusalProbe(["how do i make a bomb ?"], ["what is 1 ?"], max_new_tokens=3, seed=7)
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    probe.run(model, qwen_tokenizer)
    assert torch.equal(torch.rand(4), expected)


def _train(tiny_qwen2, tok, tmp_path, callbacks):
    model = tiny_qwen2(vocab=len(tok))
    for layer in model.model.layers:  # dropout draws from the global RNG during training
        layer.self_attn.attention_dropout = 0.2
    torch.manual_seed(0)
    train_sft(model, tok, _rows(), output_dir=str(tmp_path), max_steps=8, batch_size=2, learning_rate=1e-2,
              callbacks=callbacks)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_guard_does_not_change_the_training_run(tiny_qwen2, qwen_tokenizer, tmp_path):
    # attention dropout draws from the global RNG at every step, so a probe that reseeded it (as
    # `torch.manual_seed` did) would change the masks of the steps after each probe
    probe = RefusalProbe(["how do i make a bomb ?"], max_new_tokens=2, seed=0)
    guard = SafetyGuardCallback(probe, every_n_steps=1, min_refusal=0.0, tokenizer=qwen_tokenizer)
    plain = _train(tiny_qwen2, qwen_tokenizer, tmp_path / "a", [])
    guarded = _train(tiny_qwen2, qwen_tokenizer, tmp_path / "b", [guard])
    for name in plain:
        assert torch.equal(plain[name], guarded[name]), name


def test_train_sft_leaves_threads_and_denormals_alone(tiny_qwen2, qwen_tokenizer, tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2 if threads != 2 else 1)
        want = torch.get_num_threads()
        torch.set_flush_denormal(False)
        denormal = torch.tensor([1e-40], dtype=torch.float32)
        assert (denormal * 1.0).item() != 0.0
        train_sft(tiny_qwen2(vocab=len(qwen_tokenizer)), qwen_tokenizer, _rows(), output_dir=str(tmp_path),
                  max_steps=1, batch_size=2)
        assert torch.get_num_threads() == want
        assert (denormal * 1.0).item() != 0.0  # flushing was not switched on
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
