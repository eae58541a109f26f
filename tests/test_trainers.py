"""CoreFreezeCallback + SafetyGuardCallback together in TRL's SFTTrainer, DPOTrainer and GRPOTrainer."""

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
    word_tokenizer,
)
from transformers import TrainerCallback

from safe_cpift import CoreFreezeCallback, CoreRegion, SafetyGuardCallback
from safe_cpift.protect.guard import RefusalProbe

CPU = {"use_cpu": True, "bf16": False, "activation_checkpointing": False, "report_to": "none",
       "save_strategy": "no", "logging_steps": 1, "seed": 0, "disable_tqdm": True}
STEPS = 4


def random_region(model, top_p: float = 0.2, seed: int = 1) -> CoreRegion:
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}
    return CoreRegion.from_scores(scores, top_p=top_p, scope="tensor")


class FailAfter(TrainerCallback):
    """Before the guard in the list: the judge stops seeing refusals from step `step`; records weights."""

    def __init__(self, step: int) -> None:
        self.step, self.refuse, self.weights = step, True, {}

    def judge(self, text: str) -> bool:
        return self.refuse

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.refuse = state.global_step < self.step
        self.weights[state.global_step] = snapshot(model)


def _callbacks(model, action: str, fail_step: int):
    switch = FailAfter(fail_step)
    probe = RefusalProbe(["what is the a ?", "what is 1 ?"], ["what is 2 ?"], judge=switch.judge, max_new_tokens=3)
    guard = SafetyGuardCallback(probe, every_n_steps=1, min_refusal=0.5, action=action)
    region = random_region(model)
    return switch, guard, CoreFreezeCallback(region), region


def _check(trainer, model, start, region, guard, switch, *, stop_step: int, rolled_back: bool):
    # Frozen entries bit-identical; free entries moved at some point (the last good snapshot differs from start).
    for name, p in model.named_parameters():
        idx = region.indices(name)
        assert torch.equal(p.detach().reshape(-1)[idx], start[name].reshape(-1)[idx]), name
    moved = [n for n in start if not torch.equal(switch.weights[stop_step - 1][n], start[n])]
    assert moved, "nothing trained"
    record = next(h for h in trainer.state.log_history if "frozen_intact" in h)
    assert record["frozen_intact"] is True and record["frozen_entries"] == region.num_selected
    # Guard: probed at 0..stop_step, logged through the Trainer, stopped at the failing probe.
    steps = [h["step"] for h in trainer.state.log_history if "safety/refusal_rate" in h]
    assert steps == list(range(stop_step + 1))
    assert trainer.state.global_step == stop_step and guard.triggered_step == stop_step
    if rolled_back:
        good = switch.weights[stop_step - 1]
        assert guard.rolled_back and guard.last_good_step == stop_step - 1
        assert all(torch.equal(p, good[n]) for n, p in model.named_parameters())
        assert any(not torch.equal(good[n], switch.weights[stop_step][n]) for n in good)


def test_sft_trainer_freeze_and_guard_rollback(tmp_path):
    from trl import SFTConfig, SFTTrainer

    model = tiny_llama()
    start = snapshot(model)
    switch, guard, freeze, region = _callbacks(model, "rollback", fail_step=3)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-2,
                     weight_decay=0.1, gradient_accumulation_steps=2, max_grad_norm=1.0, max_length=32, **CPU)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(),
                         callbacks=[switch, freeze, guard])
    trainer.train()
    _check(trainer, model, start, region, guard, switch, stop_step=3, rolled_back=True)


def test_dpo_trainer_freeze_and_guard_stop(tmp_path):
    from trl import DPOConfig, DPOTrainer

    model = tiny_llama()
    start = snapshot(model)
    switch, guard, freeze, region = _callbacks(model, "stop", fail_step=3)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-2,
                     weight_decay=0.1, max_grad_norm=1.0, max_length=32, **CPU)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=preference_dataset(),
                         processing_class=word_tokenizer(), callbacks=[switch, freeze, guard])
    trainer.train()
    _check(trainer, model, start, region, guard, switch, stop_step=3, rolled_back=False)


def test_grpo_trainer_freeze_and_guard_rollback(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    def reward_short(completions, **kwargs):
        return [-float(len(str(c))) for c in completions]

    model = tiny_llama()
    start = snapshot(model)
    switch, guard, freeze, region = _callbacks(model, "rollback", fail_step=2)
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=4, learning_rate=1e-2, weight_decay=0.1, **CPU)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_short, args=args, train_dataset=prompt_dataset(),
                          processing_class=word_tokenizer(), callbacks=[switch, freeze, guard])
    trainer.train()
    _check(trainer, model, start, region, guard, switch, stop_step=2, rolled_back=True)


def test_freeze_alone_in_dpo_keeps_entries_and_trains(tmp_path):
    """Without the guard stopping anything: the full run keeps the frozen entries, the rest moves."""
    from trl import DPOConfig, DPOTrainer

    model = tiny_llama()
    start = snapshot(model)
    region = random_region(model, top_p=0.5)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
                     weight_decay=0.1, max_length=32, **CPU)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=preference_dataset(),
                         processing_class=word_tokenizer(), callbacks=[CoreFreezeCallback(region)])
    trainer.train()
    for name, p in model.named_parameters():
        idx = region.indices(name)
        flat, ref = p.detach().reshape(-1), start[name].reshape(-1)
        assert torch.equal(flat[idx], ref[idx]), name
    free_moved = sum(int((p.detach().reshape(-1) != start[n].reshape(-1)).sum()) for n, p in model.named_parameters())
    assert free_moved > 0.3 * sum(p.numel() for p in model.parameters())


def test_lora_rollback_snapshots_only_the_adapters(tmp_path):
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    switch = FailAfter(3)
    probe = RefusalProbe(["what is the a ?"], ["what is 2 ?"], judge=switch.judge, max_new_tokens=3)
    guard = SafetyGuardCallback(probe, every_n_steps=1, min_refusal=0.5, action="rollback")
    args = SFTConfig(output_dir=str(tmp_path), max_steps=10, per_device_train_batch_size=4, learning_rate=1e-2,
                     max_length=32, **CPU)
    trainer = SFTTrainer(model=tiny_llama(), args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(),
                         peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"),
                         callbacks=[switch, guard])
    trainer.train()
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    snap = guard.snapshot_state()
    assert set(snap) == trainable  # the cost of a LoRA rollback is the adapter, not the model
    assert guard.rolled_back and trainer.state.global_step == 3 and guard.last_good_step == 2
    good = switch.weights[2]
    for name, p in model.named_parameters():
        assert torch.equal(p, good[name]), name
    assert any(not torch.equal(good[n], switch.weights[3][n]) for n in trainable)


def test_guard_rollback_resumes_at_a_lower_learning_rate(tmp_path):
    """The judge fails once (at step 3): the guard restores step 2's weights, drops the optimizer state,
    lowers the learning rate and training runs to the end instead of stopping."""
    from trl import SFTConfig, SFTTrainer

    class FailOnce(FailAfter):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.refuse = state.global_step != self.step
            self.weights[state.global_step] = snapshot(model)

    model = tiny_llama()
    switch = FailOnce(3)
    probe = RefusalProbe(["what is the a ?"], ["what is 2 ?"], judge=switch.judge, max_new_tokens=3)
    guard = SafetyGuardCallback(probe, every_n_steps=1, min_refusal=0.5, action="rollback", resume_lr_factor=0.1)
    seen_lr, begin = {}, {}

    class RecordLR(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
            seen_lr[state.global_step] = optimizer.param_groups[0]["lr"]
            begin[state.global_step] = snapshot(model)

    args = SFTConfig(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                     lr_scheduler_type="constant", max_length=32, **CPU)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(),
                         callbacks=[switch, guard, RecordLR()])
    trainer.train()
    assert trainer.state.global_step == 6  # not stopped
    assert guard.resumed == [{"step": 3, "restored_step": 2, "lr_scale": 0.1}]
    assert guard.triggered_step == 3 and not guard.rolled_back
    # steps 1-3 at 1e-2; the steps after the rollback at step 3 (global_step 3, 4, 5 when they begin) at 1e-3
    assert seen_lr[2] == pytest.approx(1e-2) and seen_lr[3] == pytest.approx(1e-3) and seen_lr[5] == pytest.approx(1e-3)
    # the step after the violation started from step 2's weights: step 3's update was undone
    assert all(torch.equal(begin[3][n], switch.weights[2][n]) for n in begin[3])
    assert any(not torch.equal(switch.weights[3][n], switch.weights[2][n]) for n in switch.weights[2])


def test_guard_resume_settings_are_checked():
    probe = RefusalProbe(["what is 1 ?"])
    with pytest.raises(ValueError, match='only used with `action="rollback"`'):
        SafetyGuardCallback(probe, action="stop", resume_lr_factor=0.5)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        SafetyGuardCallback(probe, action="rollback", resume_lr_factor=1.5)
