"""DeepSpeed ZeRO with two CPU processes (gloo): stage 1/2 keep the frozen entries bit-identical in the model
and in the optimizer's fp32 master partitions and leave no `param.grad` after backward (so the gradient
protections refuse them); stage 3 is refused naming FSDP2. Needs the optional
`deepspeed` package (`pip install safe-cpift[deepspeed]`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

# DeepSpeed is an optional extra for users, but part of the `dev` extra, so this test always runs in CI
import deepspeed  # noqa: E402,F401
import pytest
import torch
from safetensors.torch import load_file
from scripts.tiny import random_region, snapshot, tiny_llama

SCRIPT = Path(__file__).parent / "scripts" / "deepspeed_train.py"


def _run(out: Path, stage: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(SCRIPT), str(out), str(stage)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, f"stage {stage} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_1_2_keep_the_core_in_the_model_and_the_master_weights(tmp_path, stage):
    region = random_region(tiny_llama(seed=0))
    for info in _run(tmp_path, stage):
        assert info["mode"] == "zero12" and info["has_hp_mapping"] is True
        assert info["frozen_intact"] is True and info["frozen_entries"] == region.num_selected
        assert info["master_intact"] is True  # the optimizer's fp32 copy did not drift either
        # ZeRO moved every reduced gradient into its partitions: a gradient protection would find nothing to
        # adjust between backward and step (why they refuse ZeRO-1/2, naming FSDP2 and DDP)
        assert info["grads_after_backward"] == [0, 0, 0]
    final = load_file(str(tmp_path / "final.safetensors"))
    start = snapshot(tiny_llama(seed=0))
    for name, t in final.items():
        idx = region.indices(name)
        assert torch.equal(t.reshape(-1)[idx], start[name].reshape(-1)[idx]), name
    assert sum(int((final[n] != start[n]).sum()) for n in start) > 0


@pytest.mark.slow
def test_zero_3_is_refused_naming_fsdp2(tmp_path):
    for info in _run(tmp_path, 3):
        assert "does not support DeepSpeed ZeRO-3 training" in info["refused"]
        assert "FSDP2" in info["refused"] and "fsdp_version: 2" in info["refused"]
