#!/usr/bin/env bash
# The tiny-world demo on a GPU: the same results table as on CPU, plus training steps per second.
# Never part of CI. Not run yet: no GPU was available where this was written; run it when one is lent.
#
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR] [extra recipe overrides...]
#
# What it does:
#   1. checks that torch sees a GPU (exits 2 otherwise: this check means nothing on CPU);
#   2. runs `safe-cpift demo --quick --device cuda` with bf16 autocast (`training.bf16=true`: float32
#      master weights, bfloat16 matmuls) into OUTPUT_DIR (default runs/gpu_check), printing the table;
#   3. prints steps/s per training stage and overall, read from each stage's stage.json, and the
#      frozen-core integrity from results.json.
# The tiny world itself is built (or loaded from ~/.cache/safe_cpift) first; building it runs on the
# same device.
set -euo pipefail
OUT="${1:-runs/gpu_check}"
shift || true
PY="${PYTHON:-python}"

"$PY" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    print("gpu_check: torch sees no GPU here (torch.cuda.is_available() is False); nothing to check", file=sys.stderr)
    sys.exit(2)
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, bf16 supported: "
      f"{torch.cuda.is_bf16_supported()}")
PY

START=$(date +%s)
safe-cpift demo --quick --device cuda --output-dir "$OUT" training.bf16=true "$@"
END=$(date +%s)

"$PY" - "$OUT" "$((END - START))" <<'PY'
import json, sys
from pathlib import Path

root, wall = Path(sys.argv[1]), int(sys.argv[2])
rows, steps, seconds = [], 0, 0.0
for summary in sorted(root.glob("*/stage.json")):
    info = json.loads(summary.read_text())
    train = info.get("train") or {}
    if train.get("steps") and train.get("train_seconds"):
        rows.append((summary.parent.name, train["steps"], train["train_seconds"]))
        steps += train["steps"]
        seconds += train["train_seconds"]
print()
print(f"{'stage':<32} {'steps':>6} {'seconds':>8} {'steps/s':>8}")
for name, n, s in rows:
    print(f"{name:<32} {n:>6} {s:>8.1f} {n / s:>8.2f}")
if seconds:
    print(f"{'all training':<32} {steps:>6} {seconds:>8.1f} {steps / seconds:>8.2f}")
results = json.loads((root / "results.json").read_text())
core = results.get("safety_core", {})
print(f"\nsafety core intact: {core.get('intact')} ({core.get('entries')} entries); demo wall time {wall} s")
PY
