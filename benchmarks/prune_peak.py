"""Peak disk of a pruned run: how many stage model directories are on disk at once, stage by stage.

Runs the tests' tiny two-task pipeline (a 2-layer Qwen2 built locally, `tests/test_architectures.py`'s
`pipeline_spec`) with every method and `prune_models` on, and counts the stage model directories
(`<stage>/model`, `safety_core/probe_model`) right after each stage, before pruning: the run's disk
at its fullest around that stage. The counting wraps `safe_cpift.pipeline.prune.prune_models`, so the
script measures any version of the pipeline (run it with another checkout's `src` on `PYTHONPATH` to
compare plans).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/prune_peak.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    import torch

    import safe_cpift.pipeline.prune as prune
    from safe_cpift.pipeline.runner import run_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="qwen2")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from test_architectures import pipeline_spec

    methods = ("aligned", "multitask_sft", "sequential_sft", "safety_mix_sft", "cpift", "safe_cpift")
    rows: list[dict] = []
    original = prune.prune_models

    def counting(ctx, run):
        models = sorted(p.parent.name + "/" + p.name for pattern in ("*/model", "*/probe_model")
                        for p in ctx.root.glob(pattern) if p.is_dir())
        rows.append({"stage": ctx.current_stage, "models": len(models), "which": models})
        return original(ctx, run)

    prune.prune_models = counting
    with tempfile.TemporaryDirectory() as tmp:
        spec, _ = pipeline_spec(args.arch, Path(tmp), methods=methods, prune_models=True)
        run_spec(spec, Path(tmp) / "run")
    peak = max(r["models"] for r in rows)
    for r in rows:
        print(f"{r['stage']:<28} {r['models']}  {' '.join(r['which'])}")
    print(f"peak: {peak} stage model directories ({', '.join(r['stage'] for r in rows if r['models'] == peak)})")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak": peak, "stages": rows}, indent=2))


if __name__ == "__main__":
    main()
