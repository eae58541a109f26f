"""Two CPU processes (gloo) with torchrun and with `accelerate launch`: frozen entries intact on every
rank, identical final weights across ranks, the guard's probe shared by rank 0."""

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

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(kind: str, out: Path) -> None:
    port = str(_free_port())
    if kind == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*cmd, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{kind} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchrun", "accelerate"])
def test_two_processes_keep_the_core_and_agree(tmp_path, kind):
    _launch(kind, tmp_path)
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    start = snapshot(tiny_llama(seed=0))
    region = random_region(tiny_llama(seed=0))
    for info in infos:
        assert info["world_size"] == 2 and info["backend"] == "gloo" and info["global_step"] == 4
        assert info["frozen_intact"] is True and info["frozen_entries"] == region.num_selected
        assert info["safety_logged_steps"] == [0, 2, 4]
    assert infos[0]["guard_history"] == infos[1]["guard_history"]  # one decision for all ranks
    assert infos[0]["judge_calls"] == 3 * 3 and infos[1]["judge_calls"] == 0  # rank 0 probes, broadcasts
    assert weights[0].keys() == weights[1].keys() == start.keys()
    for name in start:
        assert torch.equal(weights[0][name], weights[1][name]), f"ranks disagree on {name}"
        idx = region.indices(name)
        assert torch.equal(weights[0][name].reshape(-1)[idx], start[name].reshape(-1)[idx]), name
    moved = sum(int((weights[0][n] != start[n]).sum()) for n in start)
    assert moved > 0.5 * sum(t.numel() for t in start.values())


@pytest.fixture
def one_process_group():
    """A 1-process gloo group, enough to wrap a model in FSDP on CPU."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_supported_setups_pass(monkeypatch):
    from types import SimpleNamespace

    from safe_cpift.distributed import check_supported, detect_parallelism

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    model = tiny_llama()
    assert check_supported(model, SimpleNamespace(fsdp=None, deepspeed=None)) == "single"
    assert detect_parallelism(model, SimpleNamespace(fsdp="", deepspeed=None)) == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert check_supported(model) == "ddp"


@pytest.mark.parametrize(
    ("args", "env", "mode"),
    [
        ({"fsdp": "full_shard auto_wrap"}, {}, "FSDP"),
        ({"fsdp": ["full_shard"]}, {}, "FSDP"),
        ({"deepspeed": "ds_zero2.json"}, {}, "DEEPSPEED"),
        ({}, {"ACCELERATE_USE_FSDP": "true"}, "FSDP"),
        ({}, {"ACCELERATE_USE_DEEPSPEED": "true"}, "DEEPSPEED"),
    ],
)
def test_sharded_setups_are_refused_by_config(monkeypatch, args, env, mode):
    from types import SimpleNamespace

    from safe_cpift.distributed import check_supported

    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ns = SimpleNamespace(**{"fsdp": None, "deepspeed": None, **args})
    with pytest.raises(ValueError, match=f"does not support {mode} training.*docs/distributed.md"):
        check_supported(tiny_llama(), ns, who="CoreFreezeCallback")


@pytest.mark.parametrize("version", ["fsdp1", "fsdp2"])
def test_fsdp_wrapped_models_are_refused(one_process_group, version):
    """Real FSDP wrappers on CPU: v1 (flat parameters) and v2 (`fully_shard`, DTensor parameters)."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from safe_cpift.distributed import check_supported
    from safe_cpift.guard import RefusalProbe, SafetyGuardCallback

    model = tiny_llama()
    if version == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    with pytest.raises(ValueError, match="does not support FSDP training"):
        check_supported(model)
    guard = SafetyGuardCallback(RefusalProbe(["what is 1 ?"], judge=bool))
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="SafetyGuardCallback does not support FSDP"):
        guard.on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    from scripts.tiny import random_region as region_of

    from safe_cpift import CoreFreezeCallback

    freeze = CoreFreezeCallback(region_of(tiny_llama()))
    with pytest.raises(ValueError, match="CoreFreezeCallback does not support FSDP"):
        freeze.on_train_begin(args, TrainerState(), TrainerControl(), model=model)
