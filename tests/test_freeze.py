"""CoreFreezeCallback / FrozenEntries: frozen entries stay bit-identical while the rest trains."""

import copy
import logging

import pytest
import torch
from conftest import make_tiny_llama
from datasets import Dataset
from transformers import TrainerCallback

from safe_cpift.protect.freeze import CoreFreezeCallback, FrozenEntries, restore_region
from safe_cpift.regions import CoreRegion

TRAIN = dict(report_to="none", per_device_train_batch_size=4, gradient_accumulation_steps=2, learning_rate=5e-3,
             weight_decay=0.1, max_grad_norm=1.0, logging_steps=100, save_strategy="no", use_cpu=True, seed=0,
             disable_tqdm=True)


def sft_rows(n=32):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        a, b = torch.randint(0, 10, (2,), generator=g).tolist()
        rows.append({"messages": [{"role": "user", "content": f"what is {a} and {b} ?"},
                                  {"role": "assistant", "content": f"{a} {b} {(a + b) % 10}"}]})
    return Dataset.from_list(rows)


def pref_rows(n=16):
    rows = [{"prompt": [{"role": "user", "content": f"what is {a} ?"}],
             "chosen": [{"role": "assistant", "content": f"{a}"}],
             "rejected": [{"role": "assistant", "content": "sorry cannot help"}]} for a in range(10)]
    return Dataset.from_list((rows * 2)[:n])


def random_region(model, top_p=0.05, seed=1):
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    return CoreRegion.from_update(base, {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()},
                                  top_p=top_p, progress=False)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def frozen_and_moved(model, region, before):
    """(frozen entries that changed, free entries that moved, free entries)."""
    bad = moved = free = 0
    for n, p in model.named_parameters():
        m = region.mask(n)
        now = p.detach().cpu()
        bad += int((now[m] != before[n][m]).sum())
        moved += int((now[~m] != before[n][~m]).sum())
        free += int((~m).sum())
    return bad, moved, free


def sft_trainer(model, tok, out, callbacks, max_steps=8, **extra):
    from trl import SFTConfig, SFTTrainer

    settings = {"bf16": False, "activation_checkpointing": False, **TRAIN, **extra}
    args = SFTConfig(output_dir=str(out), max_steps=max_steps, max_length=32, **settings)
    return SFTTrainer(model=model, args=args, train_dataset=sft_rows(), processing_class=tok, callbacks=callbacks)


def test_sft_trainer_keeps_frozen_entries_bit_identical(word_tokenizer, tmp_path):
    model = make_tiny_llama(vocab=len(word_tokenizer))
    region = random_region(model)
    before = snapshot(model)
    cb = CoreFreezeCallback(region)
    trainer = sft_trainer(model, word_tokenizer, tmp_path, [cb])
    trainer.train()
    bad, moved, free = frozen_and_moved(trainer.model, region, before)
    assert bad == 0
    assert moved > 0.9 * free
    last = trainer.state.log_history[-1]
    assert last["frozen_entries"] == region.num_selected and last["frozen_intact"] is True
    assert cb.last_check["frozen_intact"] is True


def test_without_the_callback_weight_decay_moves_frozen_entries(word_tokenizer, tmp_path):
    """The control: the same run without restoring moves the region (so the test above can fail)."""
    model = make_tiny_llama(vocab=len(word_tokenizer))
    region = random_region(model)
    before = snapshot(model)
    sft_trainer(model, word_tokenizer, tmp_path, [], max_steps=2).train()
    assert frozen_and_moved(model, region, before)[0] > 0.9 * region.num_selected


def test_dpo_trainer_keeps_frozen_entries_bit_identical(word_tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    model = make_tiny_llama(vocab=len(word_tokenizer))
    region = random_region(model)
    before = snapshot(model)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=6, max_length=32, bf16=False,
                     activation_checkpointing=False, **TRAIN)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=pref_rows(),
                         processing_class=word_tokenizer, callbacks=[CoreFreezeCallback(region)])
    trainer.train()
    bad, moved, free = frozen_and_moved(trainer.model, region, before)
    assert bad == 0 and moved > 0.5 * free
    assert trainer.state.log_history[-1]["frozen_intact"] is True


@pytest.mark.slow
def test_bf16_autocast_checkpointing_and_grad_hooks(word_tokenizer, tmp_path):
    model = make_tiny_llama(vocab=len(word_tokenizer))
    region = random_region(model, top_p=0.2)
    before = snapshot(model)
    cb = CoreFreezeCallback(region, zero_frozen_grads=True)
    trainer = sft_trainer(model, word_tokenizer, tmp_path, [cb], max_steps=4, bf16=True,
                          activation_checkpointing=True)
    trainer.train()
    bad, moved, free = frozen_and_moved(trainer.model, region, before)
    assert bad == 0 and moved > 0.5 * free
    # with gradient hooks the optimizer never saw a gradient for frozen entries
    params = dict(trainer.model.named_parameters())
    name = max(region.counts(), key=region.counts().get)
    exp_avg = trainer.optimizer.state[params[name]]["exp_avg"]
    assert torch.count_nonzero(exp_avg.reshape(-1)[region.indices(name)]) == 0
    assert torch.count_nonzero(exp_avg) > 0
    assert cb.entries._hooks == []  # removed at train end


def test_resume_from_checkpoint_keeps_the_region(word_tokenizer, tmp_path):
    model = make_tiny_llama(vocab=len(word_tokenizer))
    original = snapshot(model)
    region = random_region(model)
    first = sft_trainer(model, word_tokenizer, tmp_path, [CoreFreezeCallback(region)], max_steps=6,
                        save_strategy="steps", save_steps=3)
    first.train()
    # a fresh process would build a new model from scratch and resume from the checkpoint
    fresh = make_tiny_llama(seed=9, vocab=len(word_tokenizer))
    cb = CoreFreezeCallback(region, reference=original)
    second = sft_trainer(fresh, word_tokenizer, tmp_path, [cb], max_steps=9, save_strategy="steps", save_steps=3)
    second.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert second.state.global_step == 9
    bad, moved, free = frozen_and_moved(second.model, region, original)
    assert bad == 0 and moved > 0.5 * free
    assert second.state.log_history[-1]["frozen_intact"] is True


def test_reference_pins_the_original_values(word_tokenizer, tmp_path, caplog):
    model = make_tiny_llama(vocab=len(word_tokenizer))
    original = snapshot(model)
    region = random_region(model)
    name = region.names()[0]
    with torch.no_grad():  # someone moved a frozen entry before this run
        dict(model.named_parameters())[name].view(-1)[region.indices(name)[0]] += 1.0
    with caplog.at_level(logging.WARNING, logger="safe_cpift.protect.freeze"):
        trainer = sft_trainer(model, word_tokenizer, tmp_path, [CoreFreezeCallback(region, reference=original)],
                              max_steps=2)
        trainer.train()
    assert "differed from `reference`" in caplog.text
    assert frozen_and_moved(model, region, original)[0] == 0


class Saboteur(TrainerCallback):
    """Writes to a frozen entry after the freeze callback has restored it."""

    def __init__(self, name, index):
        self.name, self.index = name, index

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            dict(model.named_parameters())[self.name].view(-1)[self.index] += 1.0


def test_violations_are_loud(word_tokenizer, tmp_path, caplog):
    model = make_tiny_llama(vocab=len(word_tokenizer))
    region = random_region(model)
    name = region.names()[0]
    spoil = Saboteur(name, int(region.indices(name)[0]))
    trainer = sft_trainer(model, word_tokenizer, tmp_path, [CoreFreezeCallback(region), spoil], max_steps=2)
    with pytest.raises(RuntimeError, match="1 of .* frozen core entries changed"):
        trainer.train()
    model = make_tiny_llama(vocab=len(word_tokenizer))
    cb = CoreFreezeCallback(region, on_violation="warn")
    trainer = sft_trainer(model, word_tokenizer, tmp_path, [cb, spoil], max_steps=2)
    with caplog.at_level(logging.ERROR, logger="safe_cpift.protect.freeze"):
        trainer.train()
    assert trainer.state.log_history[-1]["frozen_intact"] is False
    assert "frozen core entries changed" in caplog.text


def test_mismatched_model_is_rejected_at_train_begin():
    region = random_region(make_tiny_llama())
    cb = CoreFreezeCallback(region)
    with pytest.raises(ValueError, match="shape"):
        cb.on_train_begin(None, None, None, model=make_tiny_llama(hidden=48))
    with pytest.raises(ValueError, match="not in the region"):
        cb.on_train_begin(None, None, None, model=make_tiny_llama(layers=3))
    with pytest.raises(TypeError, match="`region`"):
        CoreFreezeCallback({"w": [1]})


def test_plain_loop_helper_with_wrapped_names():
    torch.manual_seed(0)
    inner = make_tiny_llama()
    region = random_region(inner, top_p=0.1)

    class DDPLike(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, **kw):
            return self.module(**kw)

    model = DDPLike(inner)
    before = snapshot(inner)
    frozen = FrozenEntries(model, region)
    assert len(frozen) == region.num_selected
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(0, 64, (4, 12))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        assert not frozen.verify()  # the step moved them ...
        frozen.restore()
        assert frozen.verify()  # ... and restore put them back bit for bit
    bad, moved, free = frozen_and_moved(inner, region, before)
    assert bad == 0 and moved > 0.9 * free


def test_restore_region_after_lora_merge(tmp_path):
    from peft import LoraConfig, get_peft_model

    aligned = make_tiny_llama()
    aligned.save_pretrained(tmp_path / "aligned")
    original = snapshot(aligned)
    region = random_region(aligned, top_p=0.05)
    # random (non-zero) B so that merging moves every entry of the targeted weights
    peft_model = get_peft_model(copy.deepcopy(aligned), LoraConfig(r=4, target_modules="all-linear",
                                                                   init_lora_weights=False))
    assert len(FrozenEntries(peft_model, region)) == region.num_selected  # PEFT names resolve
    merged = peft_model.merge_and_unload()
    assert frozen_and_moved(merged, region, original)[0] > 0
    assert restore_region(merged, region, tmp_path / "aligned") == region.num_selected
    bad, moved, free = frozen_and_moved(merged, region, original)
    assert bad == 0 and moved > 0.5 * free
    # an in-memory source works the same, and a source of another shape is refused
    assert restore_region(merged, region, aligned) == region.num_selected
    with pytest.raises(ValueError, match="shape"):
        restore_region(merged, region, make_tiny_llama(hidden=48))
