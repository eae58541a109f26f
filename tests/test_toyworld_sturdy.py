"""Opt-in world fields (`pretrain_safety_fraction`, `align_safety_repeats`): defaults leave the world as
it was (same cache keys, same weights); non-defaults change the right stage's key and the data."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from safe_cpift.toyworld import CODE_VERSION, ToyWorld, ToyWorldConfig, modeling

TINY = dict(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, pretrain_steps=3,
            pretrain_batch_size=4, seq_len=32, align_steps=2, align_batch_size=2, align_replay_batch_size=1)


def _key_without_opt_in_fields(cfg: ToyWorldConfig, digest: str, stage: str) -> str:
    """The cache-key formula from before the opt-in fields existed."""
    names = cfg._MODEL_FIELDS if stage == "aligned" else cfg._PRETRAIN_FIELDS
    payload = {n: getattr(cfg, n) for n in names} | {"code": CODE_VERSION, "data": digest}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("kw", [{}, {"seed": 1, "hidden_size": 64}])
def test_default_opt_in_fields_keep_the_cache_keys(kw):
    cfg = ToyWorldConfig(version=1, **kw)
    for stage in ("base", "aligned"):
        assert cfg.model_key("d", stage) == _key_without_opt_in_fields(cfg, "d", stage)


def test_opt_in_fields_change_the_right_stage_key():
    plain = ToyWorldConfig(version=1)
    deep = ToyWorldConfig(version=1, pretrain_safety_fraction=0.25)
    more = ToyWorldConfig(version=1, align_safety_repeats=3)
    assert deep.model_key("d", "base") != plain.model_key("d", "base")
    assert deep.model_key("d", "aligned") != plain.model_key("d", "aligned")
    assert more.model_key("d", "base") == plain.model_key("d", "base")  # the base model is shared
    assert more.model_key("d", "aligned") != plain.model_key("d", "aligned")


def test_opt_in_fields_reject_bad_values():
    with pytest.raises(ValueError, match="`pretrain_safety_fraction`"):
        ToyWorldConfig(version=1, pretrain_safety_fraction=1.0)
    with pytest.raises(ValueError, match="`pretrain_safety_fraction`"):
        ToyWorldConfig(version=1, pretrain_safety_fraction=-0.1)
    with pytest.raises(ValueError, match="`align_safety_repeats`"):
        ToyWorldConfig(version=1, align_safety_repeats=0)
    assert ToyWorldConfig(version=1, pretrain_safety_fraction=0.25).pretrain_safety_rows() == 4  # of a batch of 16
    assert ToyWorldConfig(version=1, pretrain_safety_fraction=0.01).pretrain_safety_rows() == 1
    assert ToyWorldConfig(version=1).pretrain_safety_rows() == 0


def test_align_safety_repeats_repeats_only_safety_rows():
    one, three = ToyWorld(ToyWorldConfig(version=1)), ToyWorld(ToyWorldConfig(version=1, align_safety_repeats=3))
    harmful, benign = one.safety_rows("train")
    n_qa = len(one.instruction_rows()) * 3
    assert len(one.alignment_rows()) == n_qa + len(harmful) + len(benign)
    assert len(three.alignment_rows()) == n_qa + 3 * (len(harmful) + len(benign))
    assert three.alignment_rows()[:n_qa] == one.alignment_rows()[:n_qa]


def test_pretrain_without_extra_rows_is_unchanged():
    shape = modeling.ModelShape(16, 1, 2, 32, 64)
    rows = torch.randint(5, 100, (20, 16))
    extra = torch.randint(5, 100, (6, 16))
    models = [modeling.make_model(shape, 100, 0, 1, seed=0) for _ in range(3)]
    modeling.pretrain(models[0], rows, steps=3, batch_size=4, lr=1e-2, seed=0)
    modeling.pretrain(models[1], rows, steps=3, batch_size=4, lr=1e-2, seed=0, extra_rows=extra, extra_batch_size=0)
    modeling.pretrain(models[2], rows, steps=3, batch_size=4, lr=1e-2, seed=0, extra_rows=extra, extra_batch_size=2)
    a, b, c = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="`extra_batch_size`"):
        modeling.pretrain(models[0], rows, steps=1, batch_size=4, lr=1e-2, seed=0, extra_rows=extra,
                          extra_batch_size=4)


def test_pretrain_safety_fraction_builds_another_deterministic_base(tmp_path):
    paths = {}
    for name, kw in (("plain", {}), ("deep", {"pretrain_safety_fraction": 0.5}), ("deep2", {"pretrain_safety_fraction": 0.5})):
        world = ToyWorld(ToyWorldConfig(version=1, seed=1, cache_dir=str(tmp_path / name), **TINY, **kw))
        paths[name] = world.base_model_path()
    plain, deep, deep2 = (load_file(paths[n] / "model.safetensors") for n in ("plain", "deep", "deep2"))
    assert paths["plain"].parent.name != paths["deep"].parent.name
    assert all(torch.equal(deep[k], deep2[k]) for k in deep)
    assert any(not torch.equal(plain[k], deep[k]) for k in plain)


def test_align_letter_rows_are_auxiliary_not_user_tasks():
    from safe_cpift.toyworld.tasks import TASKS

    plain = ToyWorld(ToyWorldConfig(version=1))
    world = ToyWorld(ToyWorldConfig(version=1, align_letter_rows=40))
    assert ToyWorldConfig(version=1, align_letter_rows=40).model_key("d", "base") == ToyWorldConfig(version=1).model_key("d", "base")
    assert ToyWorldConfig(version=1, align_letter_rows=40).model_key("d", "aligned") != ToyWorldConfig(version=1).model_key("d", "aligned")
    extra = world.alignment_rows()[len(plain.alignment_rows()):]
    assert len(extra) == 40
    train_inputs = {" ".join(r["prompt"].split(": ")[1].split()) for r in plain.task_rows("copy", "train")}
    for row in extra:
        name, letters = row["prompt"].split(": ")
        assert name not in {t.instruction for t in TASKS.values()} and letters in train_inputs
        seq = letters.split()
        expected = {"first letter": seq[0], "last letter": seq[-1], "has a": "yes" if "a" in seq else "no"}
        if name in expected:
            assert row["response"] == expected[name]
    with pytest.raises(ValueError, match="`align_letter_rows`"):
        ToyWorldConfig(version=1, align_letter_rows=-1)


def test_pretrain_chats_alignment_ties_the_base_to_the_alignment_data():
    deep = dict(pretrain_safety_fraction=0.25, pretrain_chats="alignment")
    a, b = ToyWorldConfig(version=1, **deep), ToyWorldConfig(version=1, **deep, align_letter_rows=40)
    assert a.model_key("d", "base") != b.model_key("d", "base")
    assert a.model_key("d", "base") != ToyWorldConfig(version=1, pretrain_safety_fraction=0.25).model_key("d", "base")
    # a non-default value is keyed even where it changes nothing (fraction 0), like any model field
    assert ToyWorldConfig(version=1, pretrain_chats="alignment").model_key("d", "base") != ToyWorldConfig(version=1).model_key("d", "base")
    with pytest.raises(ValueError, match="`pretrain_chats`"):
        ToyWorldConfig(version=1, pretrain_chats="everything")
