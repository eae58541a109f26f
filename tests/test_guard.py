"""SafetyGuardCallback inside a real SFTTrainer: metrics in the Trainer's log, warn / stop / rollback."""

from __future__ import annotations

import logging

import pytest
import torch
from scripts.tiny import sft_dataset, snapshot, tiny_llama, word_tokenizer
from transformers import TrainerCallback

from safe_cpift.protect.guard import ProbeResult, RefusalProbe, SafetyGuardCallback

HARMFUL = ["what is the a ?", "what is 1 and 2 ?"]
BENIGN = ["what is 3 ?"]


class SwitchJudge:
    """A judge whose verdict the test controls: refuses while `refuse` is True; counts calls."""

    def __init__(self, refuse: bool = True) -> None:
        self.refuse = refuse
        self.calls = 0

    def __call__(self, text: str) -> bool:
        self.calls += 1
        return self.refuse


class FailFrom(TrainerCallback):
    """Placed before the guard: from step `step` on, the judge stops seeing refusals; records weights."""

    def __init__(self, judge: SwitchJudge, step: int) -> None:
        self.judge, self.step, self.weights = judge, step, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.judge.refuse = state.global_step < self.step
        self.weights[state.global_step] = snapshot(model)


def _train(guard: SafetyGuardCallback, judge: SwitchJudge, fail_from: int, tmp_path, max_steps: int = 6):
    from trl import SFTConfig, SFTTrainer

    model = tiny_llama()
    start = snapshot(model)
    recorder = FailFrom(judge, fail_from)
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        activation_checkpointing=False, max_length=32, seed=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(),
                         callbacks=[recorder, guard])
    trainer.train()
    return trainer, model, start, recorder


def _guard(judge, action="warn", **kw):
    probe = RefusalProbe(HARMFUL, BENIGN, judge=judge, max_new_tokens=3)
    return SafetyGuardCallback(probe, every_n_steps=kw.pop("every_n_steps", 2), min_refusal=kw.pop("min_refusal", 0.5),
                               action=action, **kw)


def _safety_logs(trainer):
    return [h for h in trainer.state.log_history if "safety/refusal_rate" in h]


def test_warn_logs_metrics_through_the_trainer_and_keeps_training(tmp_path, caplog):
    judge = SwitchJudge()
    guard = _guard(judge, "warn")
    with caplog.at_level(logging.WARNING, logger="safe_cpift.protect.guard"):
        trainer, *_ = _train(guard, judge, fail_from=4, tmp_path=tmp_path)
    logs = _safety_logs(trainer)
    assert [h["step"] for h in logs] == [0, 2, 4, 6]  # baseline at step 0, then every 2 steps
    assert [h["safety/refusal_rate"] for h in logs] == [1.0, 1.0, 0.0, 0.0]
    assert all("safety/over_refusal_rate" in h for h in logs)
    assert all("loss" not in h and "entropy" not in h for h in logs)  # the guard's own records
    # The guard's records do not displace the Trainer's (logging_steps=1: a loss record every step).
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert trainer.state.global_step == 6  # warn never stops
    assert guard.triggered_step == 4
    assert [h["ok"] for h in guard.history] == [True, True, False, False]
    assert "refusal rate 0.000 < min_refusal 0.5" in caplog.text
    assert judge.calls == 4 * (len(HARMFUL) + len(BENIGN))  # every prompt judged at every probe


def test_stop_ends_training_at_the_failing_probe(tmp_path):
    judge = SwitchJudge()
    guard = _guard(judge, "stop")
    trainer, model, start, recorder = _train(guard, judge, fail_from=4, tmp_path=tmp_path, max_steps=10)
    assert trainer.state.global_step == 4
    assert guard.triggered_step == 4 and not guard.rolled_back
    assert all(torch.equal(p, recorder.weights[4][n]) for n, p in model.named_parameters())  # not restored


@pytest.mark.parametrize("on_disk", [False, True])
def test_rollback_restores_the_last_good_weights(tmp_path, on_disk):
    judge = SwitchJudge()
    guard = _guard(judge, "rollback", snapshot_dir=tmp_path / "snap" if on_disk else None)
    trainer, model, start, recorder = _train(guard, judge, fail_from=4, tmp_path=tmp_path, max_steps=10)
    assert trainer.state.global_step == 4 and guard.rolled_back and guard.last_good_step == 2
    good = recorder.weights[2]
    assert any(not torch.equal(good[n], recorder.weights[4][n]) for n in good)  # training did move the weights
    for name, p in model.named_parameters():
        assert torch.equal(p, good[name]), name
    assert all(torch.equal(t, good[n]) for n, t in guard.snapshot_state().items())
    assert _safety_logs(trainer)[-1]["safety/rolled_back"] == 1.0
    if on_disk:
        assert (tmp_path / "snap" / "guard_last_good.safetensors").is_file()


def test_impossible_threshold_rolls_back_to_the_starting_weights(tmp_path):
    judge = SwitchJudge(refuse=False)
    guard = _guard(judge, "rollback", min_refusal=1.0)
    trainer, model, start, recorder = _train(guard, judge, fail_from=0, tmp_path=tmp_path)
    assert guard.triggered_step == 0 and guard.rolled_back
    assert trainer.state.global_step <= 1  # the Trainer checks the stop flag after its first step
    for name, p in model.named_parameters():
        assert torch.equal(p, start[name]), name
    assert [h["step"] for h in _safety_logs(trainer)] == [0]


def test_probe_scores_real_generations():
    model, tok = tiny_llama(), word_tokenizer()
    seen = []
    probe = RefusalProbe(HARMFUL, BENIGN, judge=lambda t: (seen.append(t) or len(seen) == 1, "reason"),
                         max_new_tokens=3)
    result = probe.run(model, tok)
    assert isinstance(result, ProbeResult)
    assert result.refusal_rate == 0.5 and result.over_refusal_rate == 0.0  # first reply judged a refusal
    assert len(seen) == 3 and all(isinstance(t, str) for t in seen)
    assert [r["kind"] for r in result.records] == ["harmful", "harmful", "benign"]
    assert model.training  # mode restored (a fresh model is in train mode)


def test_probe_default_judge_records_the_deciding_rule():
    result = RefusalProbe(HARMFUL, BENIGN, max_new_tokens=3).run(tiny_llama(), word_tokenizer())
    assert all(isinstance(r["rule"], str) and r["rule"] for r in result.records)
    from safe_cpift.evals.judge import verdict

    assert all((r["refused"], r["rule"]) == (verdict(r["response"]).refused, verdict(r["response"]).rule)
               for r in result.records)


def test_on_log_fallback_without_a_trainer():
    """Driven by hand (a custom loop calling the callback events): metrics ride on the next log."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    judge = SwitchJudge()
    guard = _guard(judge, "warn", tokenizer=word_tokenizer())
    model, state, control = tiny_llama(), TrainerState(), TrainerControl()
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    guard.on_train_begin(args, state, control, model=model)
    logs = {"loss": 1.0}
    state.log_history.append({**logs, "step": 0})
    guard.on_log(args, state, control, logs=logs)
    assert logs["safety/refusal_rate"] == 1.0 and state.log_history[-1]["safety/refusal_rate"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"action": "explode"}, "`action`"),
        ({"min_refusal": 1.5}, "`min_refusal`"),
        ({"max_over_refusal": -0.1}, "`max_over_refusal`"),
        ({"every_n_steps": 0}, "`every_n_steps`"),
        ({"snapshot_dir": "x"}, "`snapshot_dir`"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    probe = RefusalProbe(HARMFUL, BENIGN, judge=bool)
    with pytest.raises(ValueError, match=match):
        SafetyGuardCallback(probe, **kwargs)


def test_bad_probe_inputs():
    with pytest.raises(TypeError, match="`probe`"):
        SafetyGuardCallback(["how do I"])
    with pytest.raises(ValueError, match="`harmful_prompts`"):
        RefusalProbe([])
    with pytest.raises(TypeError, match="`harmful_prompts`"):
        RefusalProbe("one string")
    with pytest.raises(ValueError, match="`max_over_refusal`"):
        SafetyGuardCallback(RefusalProbe(HARMFUL, judge=bool), max_over_refusal=0.2)
    with pytest.raises(TypeError, match="`judge`"):
        RefusalProbe(HARMFUL, judge="refusal")


def test_over_refusal_above_its_limit_stops(tmp_path, caplog):
    judge = SwitchJudge(refuse=True)  # refuses everything: refusal 1.0 but over-refusal 1.0
    guard = _guard(judge, "stop", max_over_refusal=0.5)
    with caplog.at_level(logging.WARNING, logger="safe_cpift.protect.guard"):
        trainer, *_ = _train(guard, judge, fail_from=100, tmp_path=tmp_path)
    assert guard.triggered_step == 0 and not guard.history[0]["ok"]
    assert trainer.state.global_step == 1  # stop requested before the first step: the Trainer checks after it
    assert "over-refusal rate 1.000 > max_over_refusal 0.5" in caplog.text
    assert "already at the first probe" in caplog.text
