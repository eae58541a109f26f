"""Tiny world v3, the default: v2's data and pretrained base, aligned deeper (the dev-split variant d14 of
docs/lab.md). A v3 model is the v2 model with v3's alignment fields, so both share one cache key."""

import pytest

from safe_cpift.recipe import load_recipe
from safe_cpift.toyworld import ToyWorld, ToyWorldConfig
from safe_cpift.toyworld.world import DEFAULT_WORLD_VERSION, VERSION_DEFAULTS

D14 = {"align_extra_lookalikes": 6, "align_extra_harmful": 6, "align_steps": 450, "align_extra_templates": 10}


def test_v3_is_the_default_and_is_v2_aligned_with_the_d14_fields():
    assert DEFAULT_WORLD_VERSION == 3 and ToyWorldConfig().version == 3
    v3 = ToyWorldConfig()
    assert {k: getattr(v3, k) for k in D14} == D14
    v2 = ToyWorldConfig(version=2)
    assert {k: getattr(v2, k) for k in D14} == {"align_extra_lookalikes": 0, "align_extra_harmful": 0,
                                                 "align_steps": 300, "align_extra_templates": 0}
    for name in VERSION_DEFAULTS[2]:
        if name not in D14:
            assert getattr(v3, name) == getattr(v2, name), name
    # the same model, the same key: the pretrained base is v2's, the aligned model is v2 + d14's
    assert v3.model_key("d", "base") == v2.model_key("d", "base")
    assert v3.model_key("d", "aligned") == ToyWorldConfig(version=2, **D14).model_key("d", "aligned")
    assert v3.model_key("d", "aligned") != v2.model_key("d", "aligned")
    # explicit values still win over the version's defaults
    assert ToyWorldConfig(align_steps=300).align_steps == 300
    assert ToyWorldConfig(align_extra_templates=0).model_key("d", "aligned") != v3.model_key("d", "aligned")


def test_v3_has_v2_data_and_more_alignment_rows():
    v2, v3 = ToyWorld(ToyWorldConfig(version=2)), ToyWorld(ToyWorldConfig())
    assert v3.task_names == v2.task_names
    assert v3.all_text() == v2.all_text() and v3.cache_dir == v2.cache_dir  # tokenizer, base model
    assert v3.safety_rows("test") == v2.safety_rows("test")
    assert v3.task_rows("capitals", "test") == v2.task_rows("capitals", "test")
    assert v3.alignment_rows(extra=False) == v2.alignment_rows()  # the pretraining mix
    assert len(v3.alignment_rows()) > len(v2.alignment_rows())


@pytest.mark.parametrize("path, version", [("recipes/toy.yaml", 3), ("recipes/toy_v2.yaml", 2),
                                           ("recipes/attack_20pct.yaml", 3), ("recipes/toy_v1.yaml", 1),
                                           ("recipes/toy_six.yaml", 3)])
def test_shipped_recipes_name_their_world(path, version):
    assert load_recipe(path).toyworld.version == version
