"""LoRA task probes (`cpift.probe_lora` / `PipelineSpec.probe_lora`): each probe trains a LoRA adapter,
merged into its probe model; the core is the top of the merged delta, and fusion SLERPs the merged models."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from test_architectures import pipeline_spec

from safe_cpift import CoreRegion


def adapted(name: str) -> bool:
    """The matrices peft's `all-linear` adapts in these models: the decoder's projections (not lm_head)."""
    return ".layers." in name and name.endswith("proj.weight")


def test_lora_probes_move_only_the_adapted_matrices_at_low_rank_and_feed_the_fusion(tmp_path):
    from safe_cpift.pipeline.runner import run_spec

    lora = {"rank": 2, "alpha": 4.0, "learning_rate": 5e-2}
    spec, aligned = pipeline_spec("llama3", tmp_path, methods=("aligned", "safe_cpift", "cpift"))
    spec = dataclasses.replace(spec, probe_lora=lora, scope="global")  # the paper's scope (see the last test)
    root = tmp_path / "run"
    assert run_spec(spec, root, stop_after="cpift_fusion")["stopped_after"] == "cpift_fusion"
    before = load_file(str(aligned / "model.safetensors"))
    for task in spec.task_names:
        stage = root / f"probe_{task}"
        info = json.loads((stage / "stage.json").read_text())
        assert info["lora"] == {**lora, "target_modules": "all-linear"}
        assert json.loads((stage / "adapter" / "adapter_config.json").read_text())["r"] == 2
        after = load_file(str(stage / "model" / "model.safetensors"))
        assert sorted(after) == sorted(before)  # merged: a plain model, no adapter tensors
        moved = [n for n in before if not torch.equal(before[n], after[n])]
        assert moved and all(adapted(n) for n in moved)  # embeddings, norms and lm_head untouched
        for name in moved:  # each update is B·A: rank <= 2 up to float rounding
            s = torch.linalg.svdvals((after[name] - before[name]).double())
            assert float(s[2:].max() / s[0]) < 1e-3, name
        core = CoreRegion.load(root / "task_cores" / task / "region")
        assert core.num_selected > 0 and set(core.names()) <= set(moved)
    for fused in ("fusion", "cpift_fusion"):  # SLERP ran on the merged probe models
        assert (root / fused / "model" / "model.safetensors").is_file()


def test_full_probes_record_no_lora_and_the_recipe_key_reaches_the_spec():
    from safe_cpift.pipeline.from_recipe import spec_from_recipe
    from safe_cpift.recipe import find_recipe, load_recipe

    assert load_recipe(find_recipe("toy")).cpift.probe_lora is None
    recipe = load_recipe(find_recipe("toy"), overrides=["cpift.probe_lora={rank: 4, learning_rate: 0.01}"])
    assert spec_from_recipe(recipe).probe_lora == {"rank": 4, "alpha": 32.0, "target_modules": "all-linear",
                                                   "learning_rate": 0.01}


@pytest.mark.parametrize(("lora", "message"), [
    ({"rank": 0}, r"`probe_lora.rank` must be an integer >= 1, got 0"),
    ({"alfa": 2}, r"unknown key `probe_lora.alfa`"),
    ({"learning_rate": -1.0}, r"`probe_lora.learning_rate` must be a number > 0"),
    ({"rank": 2}, r"`probe_lora` needs `scope: global` or `layer`"),  # pipeline_spec's scope is `tensor`
])
def test_bad_probe_lora_settings_name_the_field(tmp_path, lora, message):
    with pytest.raises(ValueError, match=message):
        pipeline_spec("llama3", tmp_path, probe_lora=lora)
