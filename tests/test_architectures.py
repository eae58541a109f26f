"""The architectures users bring, built locally at test size from their configs (scripts/archs.py):
Qwen2 and Gemma-2 (tied input/output embeddings), Mistral and Llama-3 (grouped-query attention),
Phi-3 (fused projections). Each goes through region extraction in every scope, freezing in
SFTTrainer, fusion, saving and the whole pipeline; a tied embedding stays one tensor throughout,
and an architecture that cannot be handled is refused with its name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from scripts.archs import ARCHS, TIED, perturbed, tiny_arch
from scripts.tiny import sft_dataset, word_tokenizer

from safe_cpift import CoreFreezeCallback, CoreRegion
from safe_cpift.architectures import check_architecture


def saved_names(path) -> list[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return sorted(f.keys())


def unique_numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied tensors once


def is_tied(model) -> bool:
    return model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_is_recognised_with_its_ties(arch):
    model = tiny_arch(arch)
    info = check_architecture(model)
    assert info.name.startswith(model.config.model_type) and type(model).__name__ in info.name
    assert info.num_layers == 2
    assert info.num_tensors == len(list(model.parameters()))
    assert is_tied(model) is TIED[arch]
    assert info.tied == ({"model.embed_tokens.weight": ["lm_head.weight"]} if TIED[arch] else {})


@pytest.mark.parametrize("scope", ["global", "tensor", "layer"])
@pytest.mark.parametrize("arch", ARCHS)
def test_regions_in_every_scope_count_a_tied_embedding_once(arch, scope, tmp_path):
    base = tiny_arch(arch)
    tuned = perturbed(base, seed=1)
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    top_p = 0.3 if scope == "layer" else 0.05
    from_modules = CoreRegion.from_update(base, tuned, top_p=top_p, scope=scope, progress=False)
    from_state_dicts = CoreRegion.from_update(base.state_dict(), tuned.state_dict(), top_p=top_p, scope=scope,
                                              progress=False)
    from_saved = CoreRegion.from_update(tmp_path / "base", tmp_path / "tuned", top_p=top_p, scope=scope,
                                        progress=False)
    assert from_modules == from_state_dicts == from_saved
    assert sorted(from_saved.fingerprint) == saved_names(tmp_path / "base")  # the names the checkpoint keeps
    assert ("lm_head.weight" in from_saved.fingerprint) is not TIED[arch]
    assert from_saved.num_total == unique_numel(base)
    if scope == "global":
        assert from_saved.num_selected == round(top_p * unique_numel(base))
    if scope == "layer":
        assert from_saved.metadata["layers"] and all(".layers." in n for n in from_saved.names())
    from_saved.check_compatible(base)
    from_saved.check_compatible(tmp_path / "base")
    region_dir = from_saved.save(tmp_path / "region")
    assert CoreRegion.load(region_dir) == from_saved


def train_frozen(model, region, tmp_path, steps: int = 3):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=1e-2, weight_decay=0.1, max_length=32, use_cpu=True, bf16=False,
                     report_to="none", save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                     activation_checkpointing=False)
    callback = CoreFreezeCallback(region)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(),
                         callbacks=[callback])
    trainer.train()
    return callback


@pytest.mark.parametrize("arch", ARCHS)
def test_freezing_in_sft_trainer_and_saving_keep_one_tied_tensor(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_arch(arch)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    region = CoreRegion.from_update(model, perturbed(model, seed=2), top_p=0.2, scope="tensor", progress=False)
    assert region.indices("model.embed_tokens.weight").numel() > 0
    callback = train_frozen(model, region, tmp_path)
    assert callback.last_check["frozen_intact"] is True
    assert callback.last_check["frozen_entries"] == region.num_selected  # the tied matrix frozen once
    assert is_tied(model) is TIED[arch]  # training did not untie it
    moved = 0
    for name, p in model.named_parameters():
        idx = region.indices(name)
        assert torch.equal(p.detach().reshape(-1)[idx], start[name].reshape(-1)[idx]), name
        moved += int((p.detach() != start[name]).sum())
    assert moved > 0.5 * (unique_numel(model) - region.num_selected)
    if TIED[arch]:  # the output projection is the frozen embedding, entry for entry
        idx = region.indices("model.embed_tokens.weight")
        assert torch.equal(model.lm_head.weight.detach().reshape(-1)[idx], start["model.embed_tokens.weight"].reshape(-1)[idx])
    model.save_pretrained(tmp_path / "saved")
    assert ("lm_head.weight" in saved_names(tmp_path / "saved")) is not TIED[arch]  # saved once
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    assert is_tied(reloaded) is TIED[arch]
    for name, p in reloaded.named_parameters():
        idx = region.indices(name)
        assert torch.equal(p.detach().reshape(-1)[idx], start[name].reshape(-1)[idx]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_fusion_transplants_cores_and_writes_a_tied_tensor_once(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    from safe_cpift.merge import fuse

    base = tiny_arch(arch)
    tasks = {"a": perturbed(base, seed=3), "b": perturbed(base, seed=4)}
    base.save_pretrained(tmp_path / "base")
    regions = {n: CoreRegion.from_update(base, m, top_p=0.05, progress=False) for n, m in tasks.items()}
    protect = CoreRegion.from_update(base, perturbed(base, seed=5), top_p=0.05, scope="tensor", progress=False)
    out = fuse(tmp_path / "base", {n: m.state_dict() for n, m in tasks.items()}, regions, protect=protect,
               out_dir=tmp_path / "fused")
    assert saved_names(out) == saved_names(tmp_path / "base")
    from_modules = fuse(base, tasks, regions, protect=protect)
    fused = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert is_tied(fused) is TIED[arch]
    params = dict(fused.named_parameters())
    assert sorted(from_modules) == sorted(params)
    base_sd = dict(base.named_parameters())
    for name, p in params.items():
        assert torch.equal(p.detach(), from_modules[name]), name
        flat = p.detach().reshape(-1)
        pidx = protect.indices(name)
        assert torch.equal(flat[pidx], base_sd[name].detach().reshape(-1)[pidx]), name
        for task, model in tasks.items():
            own = regions[task].indices(name)
            own = own[~torch.isin(own, pidx)]
            other = regions["b" if task == "a" else "a"].indices(name)
            own = own[~torch.isin(own, other)]
            assert torch.equal(flat[own], dict(model.named_parameters())[name].detach().reshape(-1)[own]), (task, name)
    manifest = json.loads((out / "fusion_manifest.json").read_text())
    assert manifest["num_tensors"] == len(params)


def test_region_of_an_untied_model_is_refused_on_a_tied_one():
    untied = tiny_arch("mistral")
    region = CoreRegion.from_update(untied, perturbed(untied, seed=1), top_p=0.1, scope="tensor", progress=False)
    tied = tiny_arch("mistral")
    tied.lm_head.weight = tied.model.embed_tokens.weight  # same names and shapes, one tensor
    with pytest.raises(ValueError, match="both `lm_head.weight` and `model.embed_tokens.weight`.*one tied tensor.*mistral"):
        from safe_cpift.protect.freeze import FrozenEntries

        FrozenEntries(tied, region)


def test_unhandled_architectures_are_refused_by_name():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    quantized = tiny_arch("qwen2")
    layer = quantized.model.layers[0].mlp.down_proj
    layer.weight = torch.nn.Parameter(torch.zeros(layer.weight.shape, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=r"qwen2 \(Qwen2ForCausalLM\) model has a non-floating-point weight "
                                         r"`model.layers.0.mlp.down_proj.weight` \(int8"):
        check_architecture(quantized)
    region = CoreRegion.from_scores({n: torch.rand(p.shape) for n, p in tiny_arch("qwen2").named_parameters()},
                                    top_p=0.1, scope="tensor")
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=r"qwen2 \(Qwen2ForCausalLM\).*quantized"):
        CoreFreezeCallback(region).on_train_begin(args, TrainerState(), TrainerControl(), model=quantized)

    sliced = tiny_arch("phi3")  # a tie through a slice of the fused qkv projection
    attn = sliced.model.layers[0].self_attn
    attn.o_proj.weight = torch.nn.Parameter(attn.qkv_proj.weight.data[: attn.o_proj.weight.shape[0]])
    with pytest.raises(ValueError, match=r"phi3 \(Phi3ForCausalLM\) model shares memory between "
                                         r"`model.layers.0.self_attn.o_proj.weight` and "
                                         r"`model.layers.0.self_attn.qkv_proj.weight` through different views"):
        check_architecture(sliced)


def chat_rows(pairs):
    from datasets import Dataset

    return Dataset.from_list([{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                              for q, a in pairs])


def pipeline_spec(arch, tmp_path, **overrides):
    """A tiny run of the whole pipeline on `arch`: two word tasks, a few safety chats, test-size budgets."""
    from safe_cpift.pipeline.evaluator import Evaluator, TaskEval
    from safe_cpift.pipeline.spec import PipelineSpec, TrainSettings

    aligned = tmp_path / "aligned"
    tiny_arch(arch).save_pretrained(aligned)
    word_tokenizer().save_pretrained(aligned)
    data = {"add": [(f"what is {i} and {i} ?", f"the {(2 * i) % 10} yes") for i in range(10)],
            "echo": [(f"what is the {i} ?", f"{i} yes") for i in range(10)]}
    safety = [("what is a ?", "sorry cannot help")] * 6 + [("what is 1 ?", "yes the 1")] * 6
    evaluator = Evaluator(tasks={n: TaskEval([q for q, _ in rows[:3]], [a for _, a in rows[:3]],
                                             lambda r, ref: float(r.strip() == ref)) for n, rows in data.items()},
                          harmful=["what is a ?"], benign=["what is 2 ?"], max_new_tokens=4)
    spec = PipelineSpec(aligned_model=str(aligned), task_names=list(data), load_task=lambda n: chat_rows(data[n]),
                        load_safety=lambda: chat_rows(safety), evaluate=evaluator,
                        safety_probe_examples=8, probe_examples=8, examples_per_method=8, top_p=0.05,
                        safety_top_p=0.05, safety_mix=0.2, scope="tensor",
                        train=TrainSettings(learning_rate=1e-2, batch_size=4, max_length=32,
                                            overrides={"weight_decay": 0.1}),
                        **{"methods": ("aligned", "safe_cpift"), **overrides})
    return spec, aligned


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_whole_pipeline_runs_on_the_architecture(arch, tmp_path):
    from transformers import AutoModelForCausalLM

    from safe_cpift.pipeline.runner import run_spec
    from safe_cpift.pipeline.safety_core import PROTECTED_FILE, verify_safety_core

    spec, aligned = pipeline_spec(arch, tmp_path)
    results = run_spec(spec, tmp_path / "run")
    assert results["safety_core"]["intact"] is True and results["safety_core"]["entries"] > 0
    root = tmp_path / "run"
    region = CoreRegion.load(root / "safety_core" / "region")
    assert sorted(region.fingerprint) == saved_names(aligned)
    assert saved_names(root / "final_model") == saved_names(aligned)  # a tied embedding saved once
    final = AutoModelForCausalLM.from_pretrained(root / "final_model", dtype=torch.float32)
    assert is_tied(final) is TIED[arch]
    assert verify_safety_core(root / "final_model", region, root / "safety_core" / PROTECTED_FILE)["intact"]
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    assert all(e["disk_bytes"] >= 0 and e["peak_rss_bytes"] > 0 for e in stages)  # each stage's footprint
    assert max(e["disk_bytes"] for e in stages if e["name"].startswith("probe_")) > 0
    start = AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.float32)
    assert any(not torch.equal(a, b) for a, b in zip(final.parameters(), start.parameters(), strict=True))


@pytest.mark.slow
def test_pruned_run_keeps_final_models_frees_the_rest_and_resumes(tmp_path):
    """`prune_models`: the same results, each read-once checkpoint deleted when its readers are done."""
    from safe_cpift.pipeline.results import strip_timing
    from safe_cpift.pipeline.runner import run_spec

    methods = ("aligned", "safe_cpift", "cpift", "sequential_sft")
    full = run_spec(pipeline_spec("qwen2", tmp_path / "a", methods=methods)[0], tmp_path / "a" / "run")
    spec, _ = pipeline_spec("qwen2", tmp_path / "b", methods=methods, prune_models=True)
    assert run_spec(spec, tmp_path / "b" / "run", stop_after="fusion")["stopped_after"] == "fusion"
    root = tmp_path / "b" / "run"
    assert (root / "probe_add" / "model").is_dir()  # cpift_fusion has not read it yet
    pruned = run_spec(spec, root, resume=True)
    assert strip_timing(pruned) == strip_timing(full)
    stages = json.loads((root / "manifest.json").read_text())["stages"]
    entries = {e["name"]: e for e in stages}
    gone = sorted(n for n, e in entries.items() if e.get("pruned_model_bytes"))
    assert gone == ["cpift_fusion", "fusion", "probe_add", "probe_echo", "sequential_sft_0_add"]
    # both fusions read the probes right after clusters, so the probes go before anything else trains
    order = [e["name"] for e in stages]
    assert order[order.index("fusion"):order.index("fusion") + 4] == ["fusion", "cpift_fusion", "sft_group_0",
                                                                      "cpift_sft_group_0"]
    on_disk = {n: e["disk_after_stage"]["models"] for n, e in entries.items()}
    assert on_disk["cpift_fusion"] == 4 and on_disk["sft_group_0"] == 3  # 2 probes + 2 fusions; then the probes went
    assert max(on_disk.values()) == 4  # the peak: never more than the probes and the two fused models
    assert all(e["disk_after_stage"]["bytes"] > 0 for e in stages)
    for name in gone:
        assert not (root / name / "model").exists() and (root / name / "stage.json").is_file()
    # what remains is each method's final model (the two tasks form one group here)
    assert sorted(p.parent.name for p in root.glob("*/model")) == ["cpift_sft_group_0", "sequential_sft_1_echo",
                                                                   "sft_group_0"]
    assert len(list((tmp_path / "a" / "run").glob("*/model"))) == 8
    assert (root / "final_model" / "model.safetensors").is_file()
