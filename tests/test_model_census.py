"""Models in memory: `safe_cpift.footprint.ModelCensus` counts the models alive at once, and no stage of
the pipeline holds more than two (the model it trains or evaluates, plus one reference)."""

from __future__ import annotations

import copy
import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file
from scripts.tiny import tiny_llama

from safe_cpift import CoreRegion
from safe_cpift.footprint import ModelCensus, live_models


def counted(block) -> int:
    """The census's peak over `block()`, less what it counted at its start (models other tests still hold)."""
    gc.collect()
    census = ModelCensus()
    census.start()
    at_start = census.peak
    try:
        block()
    finally:
        peak = census.stop()["peak_models"]
    return peak - at_start


def test_a_model_counts_once_with_its_nested_base_model():
    model = tiny_llama()
    mine = [m for m in live_models() if m is model or m is model.model]
    assert mine == [model]  # LlamaForCausalLM counted, its LlamaModel not again


def test_census_counts_models_built_together_and_not_those_freed_before():
    held = []
    assert counted(lambda: held.extend([tiny_llama(), tiny_llama(seed=1), tiny_llama(seed=2)])) == 3

    def one_at_a_time():
        for seed in range(3):
            model = tiny_llama(seed=seed)
            del model
            gc.collect()

    assert counted(one_at_a_time) == 1


def test_a_deep_copy_counts_once_it_is_used():
    held = []

    def build_copy_and_run():
        held.append(tiny_llama())
        held.append(copy.deepcopy(held[0]))  # a copy attaches no layers: the census sees it at its first forward
        with torch.no_grad():
            held[1](torch.tensor([[2, 3, 4]]))

    assert counted(build_copy_and_run) == 2


def test_models_built_after_stop_are_not_counted():
    census = ModelCensus()
    census.start()
    at_start = census.stop()["peak_models"]
    keep = [tiny_llama(), tiny_llama(seed=1)]  # the hooks are removed: no sample sees these
    assert census.peak == at_start and len(keep) == 2


class Witness:
    """An observer that counts the models alive on its own: at the end of every model's construction
    (`post_init`, weak references) and, by a garbage-collector scan, as every SFT of a stage begins."""

    def __init__(self) -> None:
        self.stage = ""
        self.built: list = []
        self.most: dict[str, int] = {}

    def count(self, models) -> None:
        held = [m for m in models if next(m.parameters(), None) is not None]
        inner = {id(s) for m in held for s in m.modules() if s is not m}
        n = sum(1 for m in held if id(m) not in inner)
        self.most[self.stage] = max(self.most.get(self.stage, 0), n)

    def constructed(self, model) -> None:
        self.built.append(weakref.ref(model))
        self.count([m for m in (r() for r in self.built) if m is not None])

    def stage_started(self, name: str) -> None:
        self.stage = name

    def stage_finished(self, name, info, ran) -> None:
        pass

    def training_callback(self, name: str):
        from transformers import PreTrainedModel, TrainerCallback

        witness = self

        class AtTrainBegin(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                # type(), not isinstance(): isinstance on a dead weakref.proxy among gc's objects raises
                witness.count([o for o in gc.get_objects() if issubclass(type(o), PreTrainedModel)])

        return AtTrainBegin()


def test_no_stage_of_the_pipeline_holds_more_than_two_models(tmp_path, monkeypatch):
    """Every method and the protections that load the aligned model (token_kl's reference, repair's
    probe): the model a stage trains or evaluates plus at most one reference."""
    from scripts.archs import tiny_arch
    from test_architectures import pipeline_spec
    from transformers import PreTrainedModel

    from safe_cpift.pipeline.runner import run_spec

    base = tmp_path / "base"
    tiny_arch("qwen2", seed=1).save_pretrained(base)
    methods = ("aligned", "multitask_sft", "sppft", "resta", "lora_sft", "safe_lora", "cpift",
               "safe_cpift")  # sequential_sft and safety_mix_sft train as multitask_sft does
    spec, aligned = pipeline_spec("qwen2", tmp_path, methods=methods, base_model=str(base),
                                  protections=("freeze", "safety_mix", "token_kl", "repair"),
                                  protect_settings={"repair_scales": [0.5]})
    witness = Witness()
    post_init = PreTrainedModel.post_init

    def watched(self, *args, **kwargs):
        out = post_init(self, *args, **kwargs)
        witness.constructed(self)
        return out

    monkeypatch.setattr(PreTrainedModel, "post_init", watched)
    run_spec(spec, tmp_path / "run", observer=witness)
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    peak = {e["name"]: e["peak_models"] for e in stages}
    assert max(peak.values()) <= 2, {n: p for n, p in peak.items() if p > 2}
    assert peak["sft_group_0"] == 2  # the trainee and token_kl's copy of the aligned model
    assert peak["repair"] == 2  # the repaired model and the copy each scale is tried on
    for name in ("probe_add", "multitask_sft", "sppft", "lora_sft", "safe_lora", "fusion", "eval_safe_cpift"):
        assert peak[name] == 1, name
    assert peak["clusters"] == 0  # regions and fusion stream tensors from the checkpoints
    assert witness.most and all(n <= peak[s] for s, n in witness.most.items() if s), (witness.most, peak)

    # repair reads θ_aligned and θ_base from their checkpoints: the tied embedding (one tensor, two names in a
    # state dict) gets the safety vector once, like every other weight; the safety core is then put back
    root = tmp_path / "run"
    groups = json.loads((root / "clusters" / "stage.json").read_text())["groups"]
    repaired = load_file(str(root / "repair" / "model" / "model.safetensors"))
    before = load_file(str(root / f"sft_group_{len(groups) - 1}" / "model" / "model.safetensors"))
    a, b = (load_file(str(d / "model.safetensors")) for d in (aligned, base))
    core = CoreRegion.load(root / "safety_core" / "region")
    assert "lm_head.weight" not in repaired  # tied: saved once
    for name, w in repaired.items():
        outside = torch.ones(w.numel(), dtype=torch.bool)
        outside[core.indices(name)] = False
        expected = before[name] + 0.5 * (a[name] - b[name])
        torch.testing.assert_close(w.reshape(-1)[outside], expected.reshape(-1)[outside], rtol=1e-5, atol=1e-6)


def test_a_hub_models_theta0_is_streamed_from_its_snapshot_not_held_in_memory(tmp_path, monkeypatch):
    """θ0 given as a hub id: regions and fusion read its cached snapshot (offline here), no model is loaded."""
    import huggingface_hub.constants as hub

    from safe_cpift.pipeline.common import RunContext, local_checkpoint

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / revision
    tiny_llama().save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)

    class Spec:
        aligned_model = "someone/tiny"

    census = ModelCensus()
    census.start()
    at_start = census.peak
    theta0 = RunContext(Spec(), tmp_path / "run").theta0()
    assert census.stop()["peak_models"] == at_start  # nothing loaded
    assert theta0 == snapshot.resolve() and (theta0 / "model.safetensors").is_file()
    assert local_checkpoint(snapshot) == snapshot
    with pytest.raises(ValueError, match=r"cannot read the weights of `someone/missing`.*local `save_pretrained` dir"):
        local_checkpoint("someone/missing")
