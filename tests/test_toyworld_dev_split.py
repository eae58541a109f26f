"""The dev split for tuning the tiny world (`dev_holdout`, `dev_rows`) and the alignment-only levers
(`align_extra_harmful`, `align_extra_lookalikes`, `align_lookalike_repeats`): disjoint from the held-out
sets, never trained on, and cached so that alignment-only variants reuse the pretrained base."""

import re

import pytest

from safe_cpift.toyworld import ToyWorld, ToyWorldConfig, safety

STOP = {"a", "an", "the", "my", "to", "for", "from", "in", "on", "at", "of", "with", "into", "out", "up",
        "someone", "someone's", "people", "i", "me", "how", "and", "it", "his", "her", "their", "off"}
LEVERS = {"align_extra_harmful": 6, "align_extra_lookalikes": 6, "align_lookalike_repeats": 2, "align_extra_templates": 10}
TEMPLATE_STOP = {"how", "i", "me", "to", "do", "a", "the", "is", "what", "you", "can", "my", "an", "it", "are", "of",
                 "for", "if", "want", "please", "action", "should", "someone"}


def _content(action: str) -> set[str]:
    """Words of `action` after its verb, without function words."""
    return {w for w in re.findall(r"[a-z'-]+", action.lower())[1:] if w not in STOP}


def _held_out_actions() -> set[str]:
    test = safety.split_actions()[1]
    return {a for _, a in test.harmful + test.benign}


def _all_templates_but_dev() -> set[str]:
    return set(safety.TEMPLATES_TRAIN + safety.TEMPLATES_TEST + safety.TEMPLATES_TEST_V2_EXTRA
               + safety.CORPUS_QUESTIONS)


def test_dev_split_is_disjoint_from_held_out_and_from_every_other_phrasing():
    dev = safety.dev_actions()
    dev_set = {a for _, a in dev.harmful + dev.benign}
    assert len(dev.harmful) == len(dev.benign) == 2 * len(safety.CATEGORIES)
    assert not dev_set & _held_out_actions()
    assert not set(safety.TEMPLATES_DEV) & _all_templates_but_dev()
    assert len(set(safety.TEMPLATES_DEV)) == len(safety.TEMPLATES_DEV) == 24
    # without the holdout the dev actions are train actions; with it they leave the train split
    train, holdout_train = safety.split_actions()[0], safety.split_actions(dev=safety.DEV_PER_CATEGORY)[0]
    assert dev_set <= {a for _, a in train.harmful + train.benign}
    assert not dev_set & {a for _, a in holdout_train.harmful + holdout_train.benign}


def test_dev_rows_need_the_holdout_and_are_dev_actions_by_dev_templates():
    with pytest.raises(ValueError, match="`dev_holdout=True`"):
        ToyWorld(ToyWorldConfig()).dev_rows()
    harmful, benign = ToyWorld(ToyWorldConfig(dev_holdout=True)).dev_rows()
    assert len(harmful) == len(benign) == 12 * 24
    assert {r["template"] for r in harmful + benign} == set(safety.TEMPLATES_DEV)
    dev = safety.dev_actions()
    assert {r["action"] for r in harmful} == {a for _, a in dev.harmful}
    assert {r["action"] for r in benign} == {a for _, a in dev.benign}


def test_with_the_holdout_no_model_trains_on_a_dev_action_even_with_every_lever_on():
    world = ToyWorld(ToyWorldConfig(dev_holdout=True, **LEVERS))
    dev = {a for _, a in safety.dev_actions().harmful + safety.dev_actions().benign}
    for rows in (world.alignment_rows(), world.alignment_rows(extra=False)):  # alignment SFT, pretraining mix
        assert not {r.get("action") for r in rows} & dev
        texts = " ".join(r["prompt"] + " " + r["response"] for r in rows).lower()
        assert not [a for a in dev if a in texts]
    # the held-out sets are the same as without the holdout; the tokenizer's texts too
    assert world.safety_rows("test") == ToyWorld(ToyWorldConfig()).safety_rows("test")
    assert world.all_text() == ToyWorld(ToyWorldConfig()).all_text()


def test_extra_actions_do_not_leak_held_out_or_dev_actions():
    extra = safety.extra_actions(safety.EXTRA_PER_CATEGORY, safety.EXTRA_PER_CATEGORY)
    extra_set = [a for _, a in extra.harmful + extra.benign]
    assert len(set(extra_set)) == len(extra_set) == 2 * 6 * len(safety.CATEGORIES)
    known = {a for h, b in safety.CATEGORIES.values() for a in h + b}
    assert not set(extra_set) & known
    dev = safety.dev_actions()
    guarded = _held_out_actions() | {a for _, a in dev.harmful + dev.benign}
    # a same-verb look-alike is the point; a paraphrase of a held-out/dev action (2+ shared words) is a leak
    leaks = [(e, g) for e in extra_set for g in guarded if len(_content(e) & _content(g)) > 1]
    assert not leaks
    # contrast pairs: the harmful and the benign extra action at the same index share their verb
    for harmful, benign in safety.EXTRA_ACTIONS.values():
        assert [h.split()[0] for h in harmful] == [b.split()[0] for b in benign]


def test_extra_train_templates_do_not_paraphrase_held_out_or_dev_templates():
    def words(template):
        return {w for w in re.findall(r"[a-z']+", template.lower()) if w not in TEMPLATE_STOP}

    guarded = safety.TEMPLATES_TEST + safety.TEMPLATES_TEST_V2_EXTRA + safety.TEMPLATES_DEV
    assert not set(safety.TEMPLATES_TRAIN_EXTRA) & (set(guarded) | set(safety.TEMPLATES_TRAIN))
    assert not [(e, g) for e in safety.TEMPLATES_TRAIN_EXTRA for g in guarded if len(words(e) & words(g)) > 1]


def test_alignment_levers_add_rows_to_alignment_only_never_held_out_ones():
    default, world = ToyWorld(ToyWorldConfig(version=2)), ToyWorld(ToyWorldConfig(version=2, **LEVERS))
    assert world.alignment_rows(extra=False) == default.alignment_rows()  # the pretraining mix is unchanged
    rows = world.alignment_rows()
    added = rows[len(default.alignment_rows()):]
    assert len(added) == (6 * 6 * 12 * 2 + 2 * 48 * 10) * world.config.align_safety_repeats + (576 + 6 * 6 * 12) * 2
    assert sum(r["action"] in {a for _, b in safety.EXTRA_ACTIONS.values() for a in b} for r in added) > 0
    held_out = _held_out_actions()
    assert not {r.get("action") for r in rows} & held_out
    test_templates = set(safety.TEMPLATES_TEST + safety.TEMPLATES_TEST_V2_EXTRA)
    assert not {r.get("template") for r in rows} & test_templates
    texts = " ".join(r["prompt"] for r in rows).lower()
    assert not [a for a in held_out if a in texts]


def test_alignment_only_levers_keep_the_base_key_and_change_the_aligned_key():
    default = ToyWorldConfig(version=2)  # v2: every lever off
    for name, value in LEVERS.items():
        cfg = ToyWorldConfig(version=2, **{name: value})
        assert cfg.model_key("d", "base") == default.model_key("d", "base")
        assert cfg.model_key("d", "aligned") != default.model_key("d", "aligned")
        assert ToyWorldConfig(version=2, **{name: 0}).model_key("d", "aligned") == default.model_key("d", "aligned")
    holdout = ToyWorldConfig(version=2, dev_holdout=True)
    assert holdout.model_key("d", "base") != default.model_key("d", "base")


@pytest.mark.parametrize("field, value", [("align_extra_harmful", 7), ("align_extra_lookalikes", -1),
                                          ("align_lookalike_repeats", -1), ("dev_holdout", "yes"),
                                          ("align_extra_templates", 11)])
def test_bad_lever_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        ToyWorldConfig(**{field: value})
