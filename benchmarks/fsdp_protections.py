"""Time per step of each gradient protection under FSDP2 (2 CPU processes, gloo) and in one process.

    python benchmarks/fsdp_protections.py [--steps 20] [--hidden 32 256]

Runs `tests/scripts/fsdp_train.py ... bench` twice per hidden size (torchrun with 2 processes, then
one process), each training SFTTrainer with the frozen core and, in turn, no protection, the
direction penalty, the safety-gradient projection and the first-token KL (reference sharded, and
whole per rank), and prints a Markdown table: the median wall time of a step (the first step
left out), the mean time spent inside the protection's hook per step (its own extra work, including
the all-reduces under FSDP2), the bytes of the KL reference on each rank, and the largest difference
between the FSDP2 and the one-process trained weights (same global batches). The tiny Llama has 2 layers; `--hidden` widens it. Numbers depend on the machine's load:
say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "scripts" / "fsdp_train.py"
NAMES = ("none", "direction", "projection", "token_kl", "token_kl_whole_ref")


def launch(out: Path, processes: int, steps: int, hidden: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(SCRIPT)]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(port), str(SCRIPT)]
    proc = subprocess.run([*cmd, str(out), "bench", str(steps), str(hidden)], env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads((out / "rank0.json").read_text())["protections"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 256])
    a = parser.parse_args()
    print("| hidden | protection | FSDP2, 2 processes: s/step | in the hook | one process: s/step | in the hook "
          "| KL reference bytes per rank (FSDP2) | max abs diff FSDP2 vs one process |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in a.hidden:
            fsdp = launch(Path(tmp) / f"fsdp{hidden}", 2, a.steps, hidden)
            one = launch(Path(tmp) / f"one{hidden}", 1, a.steps, hidden)
            for name in NAMES:
                f, o = fsdp[name], one[name.removesuffix("_whole_ref")]
                ref = f.get("reference_bytes")
                wf = load_file(str(Path(tmp) / f"fsdp{hidden}" / f"protect-{name}.safetensors"))
                wo = load_file(str(Path(tmp) / f"one{hidden}" / f"protect-{name.removesuffix('_whole_ref')}.safetensors"))
                diff = max(float((wf[k] - wo[k]).abs().max()) for k in wf)
                print(f"| {hidden} | {name} | {f['median_step_seconds']:.4f} | {hook(f)} "
                      f"| {o['median_step_seconds']:.4f} | {hook(o)} | {'' if ref is None else ref} | {diff:.1e} |")


def hook(run: dict) -> str:
    """Mean seconds inside the protection's hook per call (`—` without a protection)."""
    return f"{run['seconds'] / run['calls']:.4f}" if run.get("calls") else "—"

if __name__ == "__main__":
    main()
