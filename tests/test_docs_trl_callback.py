"""docs/trl_callback.md: its copy-paste example runs as written (with smaller sizes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "trl_callback.md"
# (text in the doc, smaller value for the test): each must occur exactly once, so the test notices doc edits
SMALLER = [
    (".select(range(400))", ".select(range(48))"),
    ("max_steps=100", "max_steps=4"),
    ("every_n_steps=20", "every_n_steps=2"),
    ("n=16)", "n=4)"),
    ("max_batches=16", "max_batches=2"),
    ("per_device_train_batch_size=16", "per_device_train_batch_size=8"),
]


def example_code() -> str:
    text = DOC.read_text()
    section = text.split("## The example", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "expected exactly one python block under '## The example'"
    code = blocks[0]
    for old, new in SMALLER:
        assert code.count(old) == 1, f"{old!r} should occur once in the example"
        code = code.replace(old, new)
    return code


@pytest.mark.slow
def test_trl_callback_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(example_code())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = proc.stdout
    assert re.search(r"frozen core: \{'frozen_entries': [1-9]\d*, 'frozen_intact': True", out), out
    steps = [int(s) for s in re.findall(r"^step\s+(\d+)\s+refusal \d\.\d\d\s+over-refusal \d\.\d\d$", out, flags=re.M)]
    assert steps and steps[0] == 0, out  # the baseline probe, then every 2 steps until the run ends
    assert steps == list(range(0, steps[-1] + 1, 2)), out
    assert (tmp_path / "safety_core" / "region.json").is_file()
    assert (tmp_path / "sft-out" / "final" / "model.safetensors").is_file()
