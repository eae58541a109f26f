"""The Safe-CPI-FT pipeline end to end on a test-size tiny world: all methods, the safety-core check,
determinism, and resume after an interruption (stop_after or a failure) in every stage."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from safe_cpift.pipeline import rundir
from safe_cpift.pipeline.evaluator import Evaluator, TaskEval, prompt_and_reference
from safe_cpift.pipeline.results import strip_timing
from safe_cpift.pipeline.runner import run_spec
from safe_cpift.pipeline.safety_core import PROTECTED_FILE, verify_safety_core
from safe_cpift.pipeline.spec import METHODS, PipelineSpec, TrainSettings
from safe_cpift.regions import CoreRegion

TASKS = ["sort_up", "flip"]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A test-size tiny world (1-layer Llama, a few build steps), cached in a temp dir."""
    from safe_cpift.toyworld.world import ToyWorld, ToyWorldConfig

    cfg = ToyWorldConfig(version=1, seed=0, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         pretrain_steps=10, align_steps=10, seq_len=64, task_train_size=40, task_test_size=6,
                         safety_test_size=6, cache_dir=str(tmp_path_factory.mktemp("world")))
    world = ToyWorld(cfg)
    world.aligned_model_path()
    return world


def exact(response: str, reference: str) -> float:
    return float(response.strip() == reference.strip())


def make_spec(world, **overrides) -> PipelineSpec:
    tasks = {n: TaskEval(*map(list, zip(*[prompt_and_reference(m) for m in world.task_test(n)["messages"]],
                                        strict=True)), exact) for n in TASKS}
    evaluator = Evaluator(tasks=tasks, harmful=[m[0]["content"] for m in world.harmful_test()["messages"]],
                          benign=[m[0]["content"] for m in world.benign_test()["messages"]], max_new_tokens=6)
    kwargs = dict(aligned_model=str(world.aligned_model_path()), task_names=list(TASKS), load_task=world.task_train,
                  load_safety=world.safety_train, evaluate=evaluator, safety_probe_examples=16, probe_examples=16,
                  examples_per_method=24, top_p=0.05, safety_top_p=0.05, safety_mix=0.1,
                  train=TrainSettings(batch_size=8, max_length=64, overrides={"weight_decay": 0.1}),
                  recipe={"test": "pipeline"})
    kwargs.update(overrides)
    return PipelineSpec(**kwargs)


def fingerprints(root: Path) -> dict[str, str]:
    """sha256 of every tensor of every weight and region file of every stage (what a resumed run must
    reproduce; file metadata such as the paths a region was extracted from may differ)."""
    out = {}
    for f in sorted(root.glob("*/**/*.safetensors")):
        if f.relative_to(root).parts[0] != "final_model":
            h = hashlib.sha256()
            for name, t in sorted(load_file(str(f)).items()):
                h.update(name.encode())
                h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            out[str(f.relative_to(root))] = h.hexdigest()
    return out


@pytest.fixture(scope="module")
def full_run(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("full") / "run"
    results = run_spec(make_spec(tiny_world), root)
    return root, results


def stage_order(root: Path) -> list[str]:
    return [e["name"] for e in json.loads((root / "manifest.json").read_text())["stages"]]


def test_results_have_every_method_and_the_budget(full_run):
    root, results = full_run
    assert list(results["methods"]) == list(METHODS)
    for name, r in results["methods"].items():
        for key in ("task_scores", "task_mean", "refusal_rate", "over_refusal_rate", "train_seconds", "examples_seen"):
            assert key in r, (name, key)
        assert set(r["task_scores"]) == set(TASKS)
    budget = results["budget"]
    seen = budget["examples_seen"]
    # safety probe 16 + 2 task probes x 16 + stages 24 = 72; each SFT baseline gets exactly as many
    assert seen["safe_cpift"] == 72
    assert seen["multitask_sft"] == seen["sequential_sft"] == seen["safety_mix_sft"] == 72
    assert seen["cpift"] == 56  # its task probes + its stages (no safety probe)
    assert results["methods"]["safe_cpift"]["train_seconds"] > 0
    for f in ("results.json", "report.md", "tradeoff.png", "overlap.png", "final_model/README.md",
              "final_model/model.safetensors", "manifest.json"):
        assert (root / f).is_file(), f
    assert "safety core: " in (root / "report.md").read_text()
    assert json.loads((root / "manifest.json").read_text())["status"] == "complete"


def test_stage_mixes_follow_the_plan(full_run):
    root, results = full_run
    groups = results["clusters"]["groups"]
    assert sorted(t for g in groups for t in g) == sorted(TASKS)
    total = 0
    for i, group in enumerate(groups):
        summary = json.loads((root / f"sft_group_{i}" / "stage.json").read_text())
        mix = summary["train"]["mix"]
        assert set(mix) - {"safety"} == set(group)
        assert mix.get("safety", 0) >= 1  # safe_cpift mixes safety examples into every stage
        cpift_mix = json.loads((root / f"cpift_sft_group_{i}" / "stage.json").read_text())["train"]["mix"]
        assert "safety" not in cpift_mix
        total += summary["train"]["examples_seen"]
    assert total == 24
    safety_mix = json.loads((root / "safety_mix_sft" / "stage.json").read_text())["train"]["mix"]
    assert safety_mix["safety"] == round(72 * 0.1)


def test_every_task_is_scored_after_fusion_and_every_stage(full_run, tiny_world):
    from safe_cpift.models import load_causal_lm, load_tokenizer

    root, results = full_run
    for method, prefix in (("safe_cpift", ""), ("cpift", "cpift_")):
        rows = results["stage_scores"][method]
        n_groups = len(results["clusters"]["groups"])
        assert [r["stage"] for r in rows] == [f"{prefix}fusion"] + [f"{prefix}sft_group_{i}" for i in range(n_groups)]
        assert all(set(r["task_scores"]) == set(TASKS) for r in rows)
        assert rows[0]["examples"] == 0 and sum(r["examples"] for r in rows[1:]) == 24
        # the last stage's scores are the method's final scores
        assert rows[-1]["task_scores"] == results["methods"][method]["task_scores"]
    # and they are real scores of that stage's model
    spec = make_spec(tiny_world)
    fused = load_causal_lm(root / "fusion" / "model")
    assert spec.evaluate.score_tasks(fused, load_tokenizer(root / "fusion" / "model"), TASKS) == \
        results["stage_scores"]["safe_cpift"][0]["task_scores"]
    assert "## Task scores after every stage" in (root / "report.md").read_text()
    single = results["single_task"]
    assert set(single) == set(TASKS) and results["single_task_budget"]["examples_per_task"] == 16
    assert "## Single-task reference" in (root / "report.md").read_text()
    ew = results["early_warning"]
    assert set(ew["refusal_drop"]) == set(TASKS) and set(ew["safety_overlap"]) == set(TASKS)
    aligned = results["methods"]["aligned"]["refusal_rate"]
    probe = load_causal_lm(root / "probe_flip" / "model")
    assert ew["refusal_drop"]["flip"] == pytest.approx(aligned - spec.evaluate.refusal_rate(
        probe, load_tokenizer(root / "probe_flip" / "model")))
    assert ew["pearson"] is None  # two tasks: no correlation is claimed


def test_safety_core_is_intact_and_actually_checked(full_run, tmp_path):
    root, results = full_run
    core = results["safety_core"]
    assert core["intact"] is True and core["entries"] > 0 and core["checked_entries"] == core["entries"]
    region = CoreRegion.load(root / "safety_core" / "region")
    protected = root / "safety_core" / PROTECTED_FILE
    # every pipelined stage of safe_cpift kept the core; cpift (no protection) moved it
    groups = len(results["clusters"]["groups"])
    for i in range(groups):
        assert verify_safety_core(root / f"sft_group_{i}" / "model", region, protected)["intact"]
    assert not verify_safety_core(root / f"cpift_sft_group_{groups - 1}" / "model", region, protected)["intact"]
    assert not verify_safety_core(root / "multitask_sft" / "model", region, protected)["intact"]
    # tamper with one frozen entry of a copy of the final model: the check must say so
    model_dir = tmp_path / "tampered"
    shutil.copytree(root / "final_model", model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    name = region.names()[0]
    flat = weights[name].reshape(-1).clone()
    i = int(region.indices(name)[0])
    flat[i] = torch.nextafter(flat[i], torch.tensor(float("inf")))
    weights[name] = flat.view_as(weights[name])
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    check = verify_safety_core(model_dir, region, protected)
    assert check == {"intact": False, "entries": core["entries"], "mismatched": 1, "first_mismatch": name,
                     "compared_dtypes": {"model": ["float32"], "protected": ["float32"]}}
    assert verify_safety_core(root / "final_model", region, protected)["intact"]


def test_stop_after_every_stage_then_resume_gives_the_same_results(full_run, tiny_world, tmp_path):
    ref_root, ref = full_run
    root = tmp_path / "run"
    order = stage_order(ref_root)
    for i, name in enumerate(order):
        out = run_spec(make_spec(tiny_world), root, resume=i > 0, stop_after=name)
        assert out["stopped_after"] == name
        done = sorted(p.name for p in root.iterdir() if (p / "stage.json").is_file())
        assert done == sorted(order[: i + 1])
        assert not (root / "results.json").exists()
    results = run_spec(make_spec(tiny_world), root, resume=True)
    assert strip_timing(results) == strip_timing(ref)
    assert fingerprints(root) == fingerprints(ref_root)


def test_failure_mid_stage_leaves_no_partial_stage_and_resume_recovers(full_run, tiny_world, tmp_path, monkeypatch):
    ref_root, ref = full_run
    root = tmp_path / "run"
    original = rundir.atomic_write_json
    for i, name in enumerate(stage_order(ref_root)):
        def failing(path, obj, _name=name, **kw):
            # stage.json is the stage's last file: fail just before it, after the body wrote everything
            if Path(path).name == "stage.json" and Path(path).parent.name.startswith(f".{_name}.tmp-"):
                assert any(Path(path).parent.iterdir())
                raise RuntimeError(f"injected failure in {_name}")
            return original(path, obj, **kw)

        monkeypatch.setattr(rundir, "atomic_write_json", failing)
        with pytest.raises(RuntimeError, match=f"injected failure in {name}"):
            run_spec(make_spec(tiny_world), root, resume=i > 0)
        assert not (root / name).exists()
        assert not list(root.glob(".*.tmp-*"))
        manifest = json.loads((root / "manifest.json").read_text())
        assert {e["name"]: e["status"] for e in manifest["stages"]}[name] == "failed"
    monkeypatch.setattr(rundir, "atomic_write_json", original)
    # a killed process leaves a temporary stage directory behind: resume cleans it up
    (root / ".report.tmp-killed").mkdir()
    (root / ".report.tmp-killed" / "junk").write_text("x")
    results = run_spec(make_spec(tiny_world), root, resume=True)
    assert not list(root.glob(".*.tmp-*"))
    assert strip_timing(results) == strip_timing(ref)
    assert fingerprints(root) == fingerprints(ref_root)


def test_run_directory_guards(full_run, tiny_world, tmp_path):
    ref_root, ref = full_run
    with pytest.raises(ValueError, match="--resume"):
        run_spec(make_spec(tiny_world), ref_root)
    with pytest.raises(ValueError, match="changed: test"):
        run_spec(make_spec(tiny_world, recipe={"test": "other"}), ref_root, resume=True)
    with pytest.raises(ValueError, match="`stop_after` 'probe_nope' is not a stage"):
        run_spec(make_spec(tiny_world), tmp_path / "x", stop_after="probe_nope")
    # resuming a complete run changes nothing
    again = run_spec(make_spec(tiny_world), ref_root, resume=True)
    assert again == ref


def test_spec_rejects_bad_settings(tiny_world):
    with pytest.raises(ValueError, match="`top_p` must be in"):
        make_spec(tiny_world, top_p=0.0)
    with pytest.raises(ValueError, match="`protect_source` must be one of"):
        make_spec(tiny_world, protect_source="nowhere")
    with pytest.raises(ValueError, match="`examples_per_method` .* at least the number of tasks"):
        make_spec(tiny_world, examples_per_method=1)


def test_protecting_the_safety_probes_values_without_baselines(tiny_world, tmp_path):
    """`protect_source: safety_probe` keeps the short safety SFT's values (not θ0's); only aligned + safe_cpift run."""
    root = tmp_path / "run"
    results = run_spec(make_spec(tiny_world, protect_source="safety_probe", methods=("aligned", "safe_cpift")), root)
    assert list(results["methods"]) == ["aligned", "safe_cpift"]
    assert results["safety_core"]["intact"] is True
    assert not (root / "multitask_sft").exists() and not (root / "cpift_fusion").exists()
    region = CoreRegion.load(root / "safety_core" / "region")
    protected = root / "safety_core" / PROTECTED_FILE
    assert verify_safety_core(root / "safety_core" / "probe_model", region, protected)["intact"]
    # θ0 differs from the probe on the core (that is how the core was chosen), so this check can fail
    assert not verify_safety_core(Path(tiny_world.aligned_model_path()), region, protected)["intact"]
    # the budget still matches: the baselines that would run get safe_cpift's total
    assert results["budget"]["baseline_examples"] == results["methods"]["safe_cpift"]["examples_seen"]


def test_protections_compose_into_safe_cpift_and_peer_baselines_run(tiny_world, tmp_path):
    from safe_cpift.models import load_causal_lm
    from safe_cpift.regions import CoreRegion

    spec = make_spec(tiny_world, base_model=str(tiny_world.base_model_path()), methods=("sppft", "resta"),
                     protections=("freeze", "safety_mix", "direction", "projection", "token_kl", "repair"),
                     protect_settings={"projection_every": 2, "token_kl_first_k": 2, "repair_scales": [0.0, 0.5],
                                       "sppft_top_p": 0.4})
    root = tmp_path / "run"
    results = run_spec(spec, root)
    assert list(results["methods"]) == ["aligned", "multitask_sft", "sppft", "resta", "safe_cpift"]
    assert results["methods"]["safe_cpift"]["model"] == "repair"
    # repair re-adds the safety vector but the frozen safety core keeps its protected values exactly
    assert results["safety_core"]["intact"] is True
    repair = json.loads((root / "repair" / "stage.json").read_text())
    assert repair["scale"] in (0.0, 0.5) and set(repair["tried"]) <= {"0.0", "0.5"}
    assert repair["probe"]["harmful"] > 0 and repair["probe"]["benign"] > 0
    # every pipelined stage of safe_cpift ran the three gradient protections
    log = (root / "sft_group_0" / "stage.json").read_text()
    assert json.loads(log)["train"]["examples_seen"] > 0
    # sppft: whole layers frozen, bit-identical to the aligned model; trained the rest
    layers = CoreRegion.load(root / "sppft" / "region")
    aligned = load_causal_lm(tiny_world.aligned_model_path()).state_dict()
    tuned = load_causal_lm(root / "sppft" / "model").state_dict()
    frozen = [n for n in layers.names() if ".layers." in n]
    assert frozen and all(layers.indices(n).numel() == aligned[n].numel() for n in frozen)
    assert all(torch.equal(tuned[n], aligned[n]) for n in frozen)
    assert any(not torch.equal(tuned[n], aligned[n]) for n in tuned if n not in frozen)
    # resta pays for multitask_sft's training only, and starts from its model
    assert results["methods"]["resta"]["examples_seen"] == results["methods"]["multitask_sft"]["examples_seen"]
    assert json.loads((root / "resta" / "stage.json").read_text())["source"].endswith("multitask_sft/model")


def test_safe_lora_projects_lora_sfts_adapter_trained_on_multitask_rows(tiny_world, tmp_path):
    from safe_cpift.models import load_causal_lm

    spec = make_spec(tiny_world, base_model=str(tiny_world.base_model_path()), methods=("multitask_sft", "safe_lora"),
                     protect_settings={"safe_lora_threshold": 1.0, "lora_r": 2})  # τ = 1: every layer is projected
    assert spec.methods == ("aligned", "multitask_sft", "lora_sft", "safe_lora", "safe_cpift")  # lora_sft added
    root = tmp_path / "run"
    results = run_spec(spec, root)
    assert list(results["methods"]) == ["aligned", "multitask_sft", "lora_sft", "safe_lora", "safe_cpift"]
    multi, lora = (json.loads((root / s / "stage.json").read_text()) for s in ("multitask_sft", "lora_sft"))
    # exactly multitask_sft's rows, at 10x the run's learning rate, one adapter saved beside the merged model
    assert lora["train"]["mix"] == multi["train"]["mix"]
    assert lora["train"]["examples_seen"] == multi["train"]["examples_seen"] == spec.examples_per_method + 48
    assert lora["lora"]["lora_learning_rate"] == pytest.approx(10 * spec.train.learning_rate)
    assert (root / "lora_sft" / "adapter" / "adapter_model.safetensors").is_file()
    aligned = load_causal_lm(tiny_world.aligned_model_path()).state_dict()
    base = load_causal_lm(tiny_world.base_model_path()).state_dict()
    tuned = load_causal_lm(root / "lora_sft" / "model").state_dict()
    safe = load_causal_lm(root / "safe_lora" / "model").state_dict()
    linear = [n for n in aligned if ".layers." in n and n.endswith("proj.weight")]
    assert linear and all(not torch.equal(tuned[n], aligned[n]) for n in linear)
    assert all(torch.equal(tuned[n], aligned[n]) for n in aligned if n not in linear)  # norms, embeddings: no adapter
    # safe_lora: no training of its own; every layer's update replaced by C ΔW, C = V Vᵀ / ‖V‖_F
    stage = json.loads((root / "safe_lora" / "stage.json").read_text())
    assert sorted(stage["projected"]) == sorted(linear) and stage["layers"] == len(linear)
    for n in linear:
        v = (aligned[n] - base[n]).double()
        expected = (v @ v.T / torch.linalg.matrix_norm(v)) @ (tuned[n] - aligned[n]).double()
        assert torch.allclose((safe[n] - aligned[n]).double(), expected, atol=1e-6), n
    for key in ("examples_seen", "train_seconds"):
        assert results["methods"]["safe_lora"][key] == results["methods"]["lora_sft"][key]
    report = (root / "report.md").read_text()
    assert "safe_lora" in report and "Hsu et al. 2024" in report


def test_protected_sft_is_multitask_sft_with_safe_cpifts_protections_at_its_budget(tiny_world, tmp_path):
    """`protected_sft`: one multi-task SFT from the aligned model with the frozen safety core, the safety mix and
    the token KL, no probes, fusion or stages; as many examples in all as safe_cpift."""
    from safe_cpift.models import load_causal_lm

    spec = make_spec(tiny_world, methods=("protected_sft",), protections=("freeze", "safety_mix", "token_kl"),
                     protect_settings={"token_kl_first_k": 2})
    root = tmp_path / "run"
    results = run_spec(spec, root)
    assert list(results["methods"]) == ["aligned", "protected_sft", "safe_cpift"]
    stage = json.loads((root / "protected_sft" / "stage.json").read_text())
    assert stage["protections"] == ["freeze", "safety_mix", "token_kl"]
    # the same total as safe_cpift: its SFT plus the safety probe it needs for the core
    assert results["methods"]["protected_sft"]["examples_seen"] == results["methods"]["safe_cpift"]["examples_seen"]
    assert stage["train"]["examples_seen"] == stage["budget"] == spec.examples_per_method + 2 * spec.probe_examples
    assert stage["train"]["mix"]["safety"] == int(stage["budget"] * spec.safety_mix + 0.5) > 0
    # the safety core keeps its protected values exactly (multitask_sft's training would move them); the rest trained
    region = CoreRegion.load(root / "safety_core" / "region")
    check = verify_safety_core(root / "protected_sft" / "model", region, root / "safety_core" / PROTECTED_FILE)
    assert check["intact"] and check["entries"] == len(region) > 0
    tuned = load_causal_lm(root / "protected_sft" / "model").state_dict()
    aligned = load_causal_lm(tiny_world.aligned_model_path()).state_dict()
    assert any(not torch.equal(tuned[n], aligned[n]) for n in tuned)
    assert "protected_sft" in (root / "report.md").read_text()


def test_protections_needing_the_base_model_say_so(tiny_world):
    with pytest.raises(ValueError, match="direction, repair need `base_model`"):
        make_spec(tiny_world, protections=("freeze", "direction", "repair"))
    with pytest.raises(ValueError, match="safe_lora need `base_model`"):
        make_spec(tiny_world, methods=("safe_lora",))
    with pytest.raises(ValueError, match="unknown protections"):
        make_spec(tiny_world, protections=("freez",))


def test_matched_single_task_reference_trains_each_task_alone_at_the_multitask_share(tiny_world, tmp_path):
    """`single_task: matched`: each task alone at multitask_sft's examples per task (the seesaw check), not the
    probes; its models are scored, then deleted; the probe reference stays the default."""
    from safe_cpift.pipeline.budget import baseline_examples

    spec = make_spec(tiny_world, single_task="matched")
    run_spec(spec, tmp_path / "run", stop_after="single_task")
    stage = tmp_path / "run" / "single_task"
    out = json.loads((stage / "single_task.json").read_text())
    share = baseline_examples(spec) // len(TASKS)  # 24 + 2 × 16 + 16 = 72 over two tasks
    assert share == 36 and out["budget"] == {"examples_per_task": 36, "multitask_examples_per_task": 36.0,
                                             "matched": True, "source": "matched"}
    assert {t: r["examples_seen"] for t, r in out["trained_alone"].items()} == {t: 36 for t in TASKS}
    assert set(out["scores"]) == set(TASKS) and set(out["refusal_after_probe"]) == set(TASKS)
    assert not [p for p in stage.rglob("*.safetensors")]  # the models alone are not kept
    from safe_cpift.pipeline.progress import headline

    assert headline("single_task", out).startswith("alone: sort_up ")  # the stage line shows the scores
    assert make_spec(tiny_world).single_task == "probe"
    with pytest.raises(ValueError, match="`single_task` must be one of probe, matched"):
        make_spec(tiny_world, single_task="alone")
