"""The protections under FSDP2 with two CPU processes (gloo): accelerate's FSDP plugin (version 2) in
SFTTrainer and plain `fully_shard`. Frozen entries bit-identical on the gathered model, trainable
entries equal to a one-process run with the same data order, a guard rollback restoring the sharded
weights, a sharded checkpoint resumed with the core still frozen, and the gradient protections
(direction penalty, safety-gradient projection, first-token KL) training the same weights as one
process. The plugin and one-process launches serve two tests (one launch each: a launch costs seconds)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from scripts.tiny import random_region, snapshot, tiny_llama

SCRIPT = Path(__file__).parent / "scripts" / "fsdp_train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, mode: str, processes: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")])}
    if processes == 1:
        cmd = [sys.executable, str(SCRIPT)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(_free_port()), str(SCRIPT)]
    proc = subprocess.run([*cmd, str(out), mode], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def _frozen_and_moved(weights: dict[str, torch.Tensor]) -> int:
    start = snapshot(tiny_llama(seed=0))
    region = random_region(tiny_llama(seed=0))
    assert weights.keys() == start.keys()
    for name, t in weights.items():
        idx = region.indices(name)
        assert torch.equal(t.reshape(-1)[idx], start[name].reshape(-1)[idx]), f"frozen entries of {name} moved"
    return sum(int((weights[n] != start[n]).sum()) for n in start)


@pytest.fixture(scope="module")
def plugin_runs(tmp_path_factory) -> tuple[Path, list[dict], dict]:
    """`plugin` with 2 processes and `single` with 1, each once for the module: (folder, FSDP infos, single info)."""
    root = tmp_path_factory.mktemp("fsdp-plugin")
    infos = _run(root / "fsdp", "plugin", 2)
    single = _run(root / "single", "single", 1)[0]
    return root, infos, single


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.slow
def test_fsdp2_plugin_in_sft_trainer_freezes_matches_one_process_and_rolls_back(plugin_runs):
    tmp_path, infos, _ = plugin_runs
    region = random_region(tiny_llama(seed=0))
    for info in infos:
        assert info["param_type"] == "DTensor"  # really sharded
        assert info["frozen"]["frozen_intact"] is True and info["frozen"]["frozen_entries"] == region.num_selected
        assert info["rolled_back"] is True and info["last_good_step"] == 2 and info["global_step"] == 4
        assert [h["ok"] for h in info["guard_history"]] == [True, True, False]
    assert infos[0]["guard_history"] == infos[1]["guard_history"]
    fsdp = load_file(str(tmp_path / "fsdp" / "final.safetensors"))
    single = load_file(str(tmp_path / "single" / "final.safetensors"))
    moved = _frozen_and_moved(fsdp)
    assert moved > 0.5 * sum(t.numel() for t in fsdp.values())
    for name in fsdp:  # same data order and global batch: the same training up to float reassociation
        torch.testing.assert_close(fsdp[name], single[name], rtol=1e-5, atol=1e-5)
    # the rollback at step 4 put back the sharded weights of step 2 (the last good probe), exactly
    step2 = load_file(str(tmp_path / "fsdp" / "step2.safetensors"))
    for name in fsdp:
        assert torch.equal(fsdp[name], step2[name]), name


@pytest.mark.slow
def test_gradient_protections_under_fsdp2_train_as_one_process(plugin_runs):
    """Each protection with the frozen core, 4 steps: FSDP2 (2 × 2 rows) equals one process (4 rows)."""
    root, infos, single = plugin_runs
    none = load_file(str(root / "single" / "protect-none.safetensors"))
    logged = {"direction": "penalty", "projection": "dot", "token_kl": "kl", "token_kl_whole_ref": "kl"}
    for name in ("none", *logged):
        ref_name = name.removesuffix("_whole_ref")
        ref = single["protections"][ref_name]
        for info in infos:
            run = info["protections"][name]
            assert run["param_type"] == "DTensor" and run["global_step"] == 4
            assert run["frozen"]["frozen_intact"] is True
            if name in logged:  # the logged global number (penalty, ⟨g, g_s⟩, KL) is one process's, on every rank
                assert run["calls"] == 4
                assert run["last"][logged[name]] == pytest.approx(ref["last"][logged[name]], rel=1e-4, abs=1e-9)
        fsdp = load_file(str(root / "fsdp" / f"protect-{name}.safetensors"))
        one = load_file(str(root / "single" / f"protect-{ref_name}.safetensors"))
        assert _frozen_and_moved(fsdp) > 0.5 * sum(t.numel() for t in fsdp.values())
        for key in fsdp:
            torch.testing.assert_close(fsdp[key], one[key], rtol=1e-5, atol=1e-5)
        if name != "none":  # the protection changed the training, by far more than the tolerance
            assert _max_diff(one, none) > 2e-4, name
    assert all(info["protections"]["projection"]["conflicts"] >= 1 for info in infos)  # it did project
    assert {info["protections"]["token_kl"]["reference_param_type"] for info in infos} == {"DTensor"}
    assert {info["protections"]["token_kl_whole_ref"]["reference_param_type"] for info in infos} == {"Parameter"}


@pytest.mark.slow
def test_plain_fully_shard_with_frozen_entries_and_gradient_protections(tmp_path, monkeypatch):
    infos = _run(tmp_path, "fully_shard", 2)
    region = random_region(tiny_llama(seed=0))
    for info in infos:
        assert info["param_type"] == "DTensor"
        assert info["frozen"]["frozen_intact"] is True and info["frozen"]["frozen_entries"] == region.num_selected
    local = [info["frozen"]["local_entries"] for info in infos]
    assert sum(local) == region.num_selected and min(local) > 0  # each rank restores its own rows only
    assert _frozen_and_moved(load_file(str(tmp_path / "final.safetensors"))) > 0
    # the gradient protections in the same hand-written loop: the weights one process gets on the global batches
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports `tiny` as its sibling
    from scripts.fsdp_train import HAND_LOOP_PROTECTIONS, hand_loop_one_process

    for name in HAND_LOOP_PROTECTIONS:
        runs = [info["protections"][name] for info in infos]
        assert all(r["param_type"] == "DTensor" and r["frozen_intact"] is True and r["logged"] for r in runs), name
        for a, b in zip(*(r["logged"] for r in runs), strict=True):  # global numbers (penalty, ⟨g, g_s⟩, KL): the same on both ranks
            assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-9) for k in a), name
        sharded = load_file(str(tmp_path / f"fully_shard-{name}.safetensors"))
        one = hand_loop_one_process(name)
        assert _frozen_and_moved(sharded) > 0.5 * sum(t.numel() for t in sharded.values())
        for key in sharded:
            torch.testing.assert_close(sharded[key], one[key], rtol=1e-5, atol=1e-5, msg=f"{name}: {key}")


@pytest.mark.slow
def test_sharded_checkpoint_resume_keeps_the_core_frozen(tmp_path):
    infos = _run(tmp_path, "resume", 2)
    for info in infos:
        assert info["checkpoints"] == ["checkpoint-2"] and info["global_step"] == 4
        assert any(f.endswith(".distcp") for f in info["checkpoint_files"])  # a sharded (DCP) checkpoint
        assert info["frozen"]["frozen_intact"] is True
    assert _frozen_and_moved(load_file(str(tmp_path / "final.safetensors"))) > 0
