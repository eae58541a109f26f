"""The device comes from `--device` / $SAFE_CPIFT_DEVICE / the spec, never hard-wired to the CPU.
(No GPU here: the CUDA branch is checked through the plumbing, and `benchmarks/gpu_check.sh` is for a GPU machine.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from safe_cpift.runtime import DEVICE_VARIABLE, resolve_device

SRC = Path(__file__).resolve().parents[1] / "src" / "safe_cpift"


def test_resolve_device_follows_argument_environment_and_auto(monkeypatch):
    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    assert resolve_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    monkeypatch.setenv(DEVICE_VARIABLE, "cpu")
    assert resolve_device() == "cpu"
    with pytest.raises(ValueError, match="`device` must be one of auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch sees no GPU here; use `--device cpu`"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(DEVICE_VARIABLE, "auto")
    assert resolve_device() == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_training_uses_the_resolved_device(monkeypatch):
    import safe_cpift.runtime as runtime
    from safe_cpift.training import sft_config

    monkeypatch.setattr(runtime, "resolve_device", lambda device=None: "cpu")
    assert sft_config("unused").use_cpu is True
    monkeypatch.setattr(runtime, "resolve_device", lambda device=None: "cuda")
    assert sft_config("unused").use_cpu is False
    assert sft_config("unused", use_cpu=True).use_cpu is True  # an explicit setting wins


def test_pipeline_loads_models_on_the_spec_device(monkeypatch):
    import safe_cpift.models as models
    import safe_cpift.runtime as runtime
    from safe_cpift.pipeline import common
    from safe_cpift.pipeline.spec import PipelineSpec

    seen = []

    def fake_load(source, **kwargs):
        seen.append(kwargs["device"])
        from scripts.tiny import tiny_llama

        return tiny_llama()

    monkeypatch.setattr(models, "load_causal_lm", fake_load)
    monkeypatch.setattr(runtime, "resolve_device", lambda device=None: device or "cuda")
    spec = PipelineSpec(aligned_model="org/hub-model", task_names=["t"], load_task=None, load_safety=None,
                        evaluate=None, device="cuda:1")
    common.load_model("somewhere", spec)
    common.load_model("somewhere", PipelineSpec(aligned_model="x", task_names=["t"], load_task=None,
                                                load_safety=None, evaluate=None))
    assert seen == ["cuda:1", "cuda"]  # (a hub id's θ0 is streamed from its snapshot, never loaded: test_model_census)


def test_nothing_in_the_library_pins_training_to_the_cpu():
    pinned = []
    for path in SRC.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"use_cpu\s*=\s*True", line) or re.search(r"""\.to\(\s*["']cpu["']\s*\)\s*$""", line):
                pinned.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not pinned, "hard-wired CPU:\n" + "\n".join(pinned)


def test_demo_and_run_refuse_cuda_without_a_gpu(monkeypatch, capsys):
    from safe_cpift.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--quick", "--device", "cuda", "--output-dir", "unused"]) == 2
    assert "torch sees no GPU here; use `--device cpu`" in capsys.readouterr().err


def test_gpu_check_script_is_valid_bash_and_refuses_without_a_gpu():
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run benchmarks/gpu_check.sh itself")
    proc = subprocess.run(["bash", str(script), "unused"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "torch sees no GPU here" in proc.stderr
