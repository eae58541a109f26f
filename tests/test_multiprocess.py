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
        ({"fsdp": "full_shard auto_wrap"}, {}, "FSDP1"),
        ({"fsdp": ["full_shard"], "fsdp_config": {"version": 1}}, {}, "FSDP1"),
        ({"deepspeed": {"zero_optimization": {"stage": 3}}}, {}, "DeepSpeed ZeRO-3"),
        ({"deepspeed": "missing_ds_config.json"}, {}, "DeepSpeed ZeRO-3"),
        ({}, {"ACCELERATE_USE_FSDP": "true"}, "FSDP1"),
        ({}, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP1"),
        ({}, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "DeepSpeed ZeRO-3"),
    ],
)
def test_sharded_setups_are_refused_by_config(monkeypatch, args, env, mode):
    from types import SimpleNamespace

    from safe_cpift.distributed import check_supported

    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ns = SimpleNamespace(**{"fsdp": None, "fsdp_config": None, "deepspeed": None, **args})
    with pytest.raises(ValueError, match=f"does not support {mode} training.*FSDP2.*docs/distributed.md"):
        check_supported(tiny_llama(), ns, who="CoreFreezeCallback")


@pytest.mark.parametrize(
    ("args", "env"),
    [({"fsdp": True, "fsdp_config": {"version": 2}}, {}), ({}, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}),
     ({"deepspeed": {"zero_optimization": {"stage": 2}}}, {}),
     ({}, {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"})],
)
def test_fsdp2_and_zero12_by_config_are_accepted(monkeypatch, args, env):
    from types import SimpleNamespace

    from safe_cpift.distributed import check_supported, detect_parallelism

    for key in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "FSDP_VERSION", "WORLD_SIZE",
                "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ns = SimpleNamespace(**{"fsdp": None, "fsdp_config": None, "deepspeed": None, **args})
    expected = "zero12" if (args.get("deepspeed") or env.get("ACCELERATE_USE_DEEPSPEED")) else "fsdp2"
    assert detect_parallelism(None, ns) == expected
    if expected == "fsdp2":  # a model not sharded (accelerate falls back to DDP on CPU) holds whole tensors
        assert check_supported(tiny_llama(), ns) == "single"


def test_fsdp1_wrapped_models_are_refused_naming_fsdp2(one_process_group):
    """A real FSDP1 wrapper on CPU (flat parameters): refused by both callbacks, pointing at FSDP2."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from safe_cpift.distributed import check_supported
    from safe_cpift.protect.guard import RefusalProbe, SafetyGuardCallback

    model = FullyShardedDataParallel(tiny_llama(), use_orig_params=True, device_id=torch.device("cpu"))
    with pytest.raises(ValueError, match="does not support FSDP1 training.*fsdp_version: 2"):
        check_supported(model)
    guard = SafetyGuardCallback(RefusalProbe(["what is 1 ?"], judge=bool))
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="SafetyGuardCallback does not support FSDP1"):
        guard.on_train_begin(args, TrainerState(), TrainerControl(), model=model)
    from safe_cpift import CoreFreezeCallback

    freeze = CoreFreezeCallback(random_region(tiny_llama()))
    with pytest.raises(ValueError, match="CoreFreezeCallback does not support FSDP1"):
        freeze.on_train_begin(args, TrainerState(), TrainerControl(), model=model)


def test_fsdp2_models_are_accepted_and_other_dtensor_layouts_refused(one_process_group):
    """`fully_shard` (DTensors sharded on dim 0) is supported; a DTensor sharded on dim 1 is not."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    from safe_cpift import FrozenEntries
    from safe_cpift.distributed import check_supported, detect_parallelism

    model = tiny_llama()
    region = random_region(tiny_llama())
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert check_supported(model) == "fsdp2"
    frozen = FrozenEntries(model, region)
    assert frozen.sharded and frozen.local_entries == frozen.num_entries == region.num_selected
    assert frozen.verify(all_ranks=True)

    other = tiny_llama()
    mesh = init_device_mesh("cpu", (1,))
    proj = other.model.layers[0].mlp.down_proj
    proj.weight = torch.nn.Parameter(distribute_tensor(proj.weight.detach(), mesh, [Shard(1)]))
    assert detect_parallelism(other) == "dtensor"
    with pytest.raises(ValueError, match="does not support DTensor-sharded training.*Use FSDP2"):
        check_supported(other)


def test_gradient_protections_accept_fsdp2_and_refuse_zero12_naming_what_works(one_process_group):
    """FSDP2 is accepted, and on a 1-rank mesh the sharded code paths (DTensor gradients created and
    adjusted shard-wise, partial sums all-reduced) give the plain model's gradients; ZeRO-1/2 is refused."""
    from types import SimpleNamespace

    from torch.distributed.fsdp import fully_shard
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from safe_cpift.protect.direction import AlignmentDirectionPenalty

    plain, model = tiny_llama(), tiny_llama()
    sd = {n: p.detach().clone() for n, p in plain.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    base = {n: t + 0.01 * torch.randn(t.shape, generator=gen) for n, t in sd.items()}
    with torch.no_grad():  # both models moved the same way off the aligned weights
        for (_, p), (_, q) in zip(plain.named_parameters(), model.named_parameters(), strict=True):
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
            q.copy_(p)
    fully_shard(model)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
    penalties = [AlignmentDirectionPenalty(sd, base, strength=3.0) for _ in range(2)]
    penalties[0].on_train_begin(args, TrainerState(), TrainerControl(), model=model)  # FSDP2: accepted
    got = [penalty.adjust(m, 0)["penalty"] for penalty, m in zip(penalties, (model, plain), strict=True)]
    assert got[0] == pytest.approx(got[1], rel=1e-6) and got[0] > 0
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            assert type(p.grad).__name__ == "DTensor"
            torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="kept only one rank's rows.*build a new one"):
        penalties[0].adjust(plain, 1)  # cut to the sharded model's rows: not reusable on a whole model

    zero2 = SimpleNamespace(fsdp=None, fsdp_config=None, deepspeed={"zero_optimization": {"stage": 2}})
    with pytest.raises(ValueError, match="AlignmentDirectionPenalty does not support DeepSpeed ZeRO-1/2.*FSDP2.*DDP"
                                         ".*CoreFreezeCallback"):
        penalties[1].on_train_begin(zero2, TrainerState(), TrainerControl(), model=tiny_llama())
