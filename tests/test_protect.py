"""The protections of `safe_cpift.protect`: each alone in a Trainer does what it says, measured against
the same run without it."""

from __future__ import annotations

import copy

import pytest
import torch
from scripts.tiny import (
    preference_dataset,
    prompt_dataset,
    sft_dataset,
    snapshot,
    tiny_llama,
    tiny_qwen2,
    word_tokenizer,
)
from scripts.tiny import safety_chats as safety_rows

from safe_cpift.protect import PROTECTIONS, get_protection
from safe_cpift.protect.batches import ChatBatches, response_nll, response_positions
from safe_cpift.protect.direction import AlignmentDirectionPenalty, SafetyGradientProjection
from safe_cpift.protect.repair import add_safety_vector, choose_scale
from safe_cpift.protect.token_kl import ResponseTokenKL, kl_on_rows

CPU = {"use_cpu": True, "bf16": False, "report_to": "none", "save_strategy": "no", "logging_steps": 1, "seed": 0,
       "disable_tqdm": True}


def sft(model, tmp_path, callbacks=(), steps: int = 8, lr: float = 1e-2):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=lr,
                     max_length=32, activation_checkpointing=False, **CPU)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(),
                         callbacks=list(callbacks))
    trainer.train()
    return trainer


def test_response_positions_cover_exactly_the_reply():
    tok = word_tokenizer()
    batch = ChatBatches(tok, safety_rows(2), batch_size=2).next()
    mask = response_positions(batch)
    for i in range(2):
        ids = batch.input_ids[i][batch.attention_mask[i].bool()].tolist()
        predicted = [ids[t + 1] for t in range(len(ids) - 1) if mask[i, t]]
        reply = tok("sorry cannot help .", add_special_tokens=False)["input_ids"]
        assert predicted == reply  # the reply's tokens (and the template's closing "."), nothing of the prompt
    first2 = response_positions(batch, first_k=2)
    assert int(first2.sum()) == 4


def test_direction_penalty_shrinks_the_update_orthogonal_to_the_alignment(tmp_path):
    aligned = tiny_llama()
    gen = torch.Generator().manual_seed(3)
    base = {n: p.detach() + 0.05 * torch.randn(p.shape, generator=gen) for n, p in aligned.named_parameters()}
    aligned_sd = {n: p.detach().clone() for n, p in aligned.named_parameters()}

    def orthogonal_norm(model, penalty):
        return sum(float(penalty.orthogonal(n, p.detach() - aligned_sd[n]).pow(2).sum())
                   for n, p in model.named_parameters() if n in penalty.direction)

    free, held = copy.deepcopy(aligned), copy.deepcopy(aligned)
    probe = AlignmentDirectionPenalty(aligned_sd, base, strength=0.0)
    sft(free, tmp_path / "a")
    penalty = AlignmentDirectionPenalty(aligned_sd, base, strength=50.0)
    trainer = sft(held, tmp_path / "b", [penalty])
    assert penalty.calls == 8
    assert any("protect/direction/penalty" in row for row in trainer.state.log_history)
    assert orthogonal_norm(held, probe) < 0.5 * orthogonal_norm(free, probe)
    moved = sum(int((p.detach() != aligned_sd[n]).sum()) for n, p in held.named_parameters())
    assert moved > 0  # constrained, not frozen


def test_direction_penalty_needs_a_real_direction():
    m = tiny_llama()
    sd = {n: p.detach() for n, p in m.named_parameters()}
    with pytest.raises(ValueError, match="no alignment direction"):
        AlignmentDirectionPenalty(sd, sd)
    bad = dict(sd)
    name = next(n for n, p in sd.items() if p.dim() == 2)
    bad[name] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=f"`base` tensor {name}"):
        AlignmentDirectionPenalty(sd, bad)


def test_projection_removes_exactly_the_conflicting_component():
    model, tok = tiny_llama(), word_tokenizer()
    proj = SafetyGradientProjection(tok, safety_rows(), every=1000, batch_size=4)  # keep the safety gradient fixed
    params = [p for p in model.parameters()]
    g_s = proj._safety_gradient(model, params)
    for p, g in zip(params, g_s, strict=True):  # a task gradient pointing straight against safety, plus noise
        p.grad = -g.clone() + 0.01 * torch.randn_like(g)
    proj.safety_grad = g_s
    out = proj.adjust(model, 1)
    assert out["dot"] < 0 and proj.conflicts == 1
    dot_after = sum(float((p.grad.double() * g.double()).sum()) for p, g in zip(params, g_s, strict=True))
    assert abs(dot_after) < 1e-6 * sum(float((g.double() ** 2).sum()) for g in g_s)
    # an agreeing gradient is left alone
    for p, g in zip(params, g_s, strict=True):
        p.grad = g.clone()
    before = [p.grad.clone() for p in params]
    proj.adjust(model, 2)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))


def test_projection_in_sft_keeps_the_safety_loss_lower(tmp_path):
    tok = word_tokenizer()
    start = tiny_llama()
    rows = safety_rows()
    batch = ChatBatches(tok, rows, batch_size=len(rows)).next()
    free, held = copy.deepcopy(start), copy.deepcopy(start)
    sft(free, tmp_path / "a")
    proj = SafetyGradientProjection(tok, rows, every=2, batch_size=8)
    sft(held, tmp_path / "b", [proj])
    with torch.no_grad():
        assert float(response_nll(held, batch)) < float(response_nll(free, batch))
    assert proj.conflicts >= 1


def test_token_kl_keeps_the_first_reply_tokens_near_the_aligned_model(tmp_path):
    tok, rows = word_tokenizer(), safety_rows()
    aligned = tiny_llama()
    free, held = copy.deepcopy(aligned), copy.deepcopy(aligned)
    sft(free, tmp_path / "a")
    kl = ResponseTokenKL(aligned, tok, rows, strength=5.0, first_k=3, batch_size=8)
    trainer = sft(held, tmp_path / "b", [kl])
    assert any("protect/token_kl/kl" in row for row in trainer.state.log_history)
    assert kl_on_rows(held, aligned, tok, rows, first_k=3) < 0.5 * kl_on_rows(free, aligned, tok, rows, first_k=3)


def test_callbacks_run_in_dpo_and_grpo(tmp_path):
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

    tok = word_tokenizer()
    model = tiny_llama()
    kl = ResponseTokenKL(model, tok, safety_rows(), strength=1.0, first_k=2, batch_size=4)
    proj = SafetyGradientProjection(tok, safety_rows(), batch_size=4)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                     max_length=32, **CPU)
    DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=preference_dataset(),
               processing_class=tok, callbacks=[kl, proj]).train()
    assert kl.calls == 2 and proj.calls == 2

    model = tiny_llama()
    start = snapshot(model)
    kl = ResponseTokenKL(model, tok, safety_rows(), strength=1.0, first_k=2, batch_size=4)
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=4, learning_rate=1e-2, **CPU)
    GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float(len(str(c))) for c in completions],
                args=args, train_dataset=prompt_dataset(), processing_class=tok, callbacks=[kl]).train()
    assert kl.calls == 2
    assert any(not torch.equal(p.detach(), start[n]) for n, p in model.named_parameters())


def test_safety_vector_changes_a_tied_embedding_once():
    base, aligned = tiny_qwen2(seed=1), tiny_qwen2(seed=2)  # embedding and output layer share one storage
    tuned = copy.deepcopy(base)
    assert tuned.lm_head.weight.data_ptr() == tuned.model.embed_tokens.weight.data_ptr()
    assert add_safety_vector(tuned, aligned, base, 0.5) == len(dict(base.named_parameters()))
    want = base.model.embed_tokens.weight + 0.5 * (aligned.model.embed_tokens.weight - base.model.embed_tokens.weight)
    torch.testing.assert_close(tuned.model.embed_tokens.weight, want)  # added once, not twice
    assert tuned.lm_head.weight.data_ptr() == tuned.model.embed_tokens.weight.data_ptr()  # still tied


def test_safety_vector_and_scale_choice():
    base, aligned = tiny_llama(seed=1), tiny_llama(seed=2)
    tuned = copy.deepcopy(base)
    assert add_safety_vector(tuned, aligned, base, 1.0) == len(base.state_dict())
    for (n, p), q in zip(tuned.state_dict().items(), aligned.state_dict().values(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), n
    with pytest.raises(ValueError, match="pass the models this one was tuned from"):
        add_safety_vector(tuned, tiny_llama(hidden=16), base, 1.0)

    def score(model):  # refusal grows with the scale; over-refusal too, past 0.5
        s = float((model.state_dict()["lm_head.weight"] - base.state_dict()["lm_head.weight"]).norm()
                  / (aligned.state_dict()["lm_head.weight"] - base.state_dict()["lm_head.weight"]).norm())
        return s, max(0.0, s - 0.5), 1 - s

    scale, tried = choose_scale(copy.deepcopy(base), aligned, base, score, min_refusal=0.4, max_over_refusal=0.1)
    assert scale == 0.5 and sorted(tried) == [0.0, 0.25, 0.5]
    scale, tried = choose_scale(copy.deepcopy(base), aligned, base, score, min_refusal=0.99, max_over_refusal=0.0)
    assert len(tried) == 5 and scale == 0.5  # none reaches: the first best refusal − over-refusal (0.5)


def test_registry_names_and_did_you_mean():
    assert {"freeze", "guard", "direction", "projection", "token_kl", "safety_mix", "repair"} <= set(PROTECTIONS)
    for entry in PROTECTIONS.values():
        module, _, attr = entry.target.partition(":")
        assert hasattr(__import__(module, fromlist=[attr]), attr), entry.target
    with pytest.raises(ValueError, match="did you mean `token_kl`"):
        get_protection("token_k")


def test_safe_lora_projection_replaces_only_dissimilar_updates():
    from safe_cpift.protect.repair import safe_lora_projection

    base, aligned = tiny_llama(seed=1), tiny_llama(seed=2)
    a_sd, b_sd = aligned.state_dict(), base.state_dict()
    tuned = copy.deepcopy(aligned)
    names = [n for n, w in a_sd.items() if w.dim() == 2]
    along, across = names[0], names[1]
    with torch.no_grad():
        tuned.state_dict()[along].add_(0.1 * (a_sd[along] - b_sd[along]))  # along the alignment direction
        tuned.state_dict()[across].add_(torch.randn(a_sd[across].shape, generator=torch.Generator().manual_seed(0)))
    before = {n: w.clone() for n, w in tuned.state_dict().items()}
    cos = safe_lora_projection(copy.deepcopy(tuned), aligned, base, threshold=-2.0)["cosine"]  # measure only
    assert set(cos) == {along, across}  # untouched weights have no update to judge
    assert cos[along] > cos[across]
    out = safe_lora_projection(tuned, aligned, base, threshold=(cos[along] + cos[across]) / 2)
    assert out["projected"] == [across]
    assert torch.equal(tuned.state_dict()[along], before[along])
    v = a_sd[across] - b_sd[across]
    delta = before[across] - a_sd[across]
    expected = a_sd[across] + v @ (v.T @ delta) / torch.linalg.matrix_norm(v.double()).float()
    assert torch.allclose(tuned.state_dict()[across], expected, atol=1e-5)
