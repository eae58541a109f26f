"""The protection study: each protection alone and in compositions, beside the baselines, over seeds.

For every seed, one *reference* run of the recipe trains every baseline (multitask_sft,
safety_mix_sft = SafeInstr, the peer baselines sppft and resta, cpift) and safe_cpift with the
recipe's composition. Then each composition row runs safe_cpift alone, reusing the reference run's
stages that do not depend on the composition (aligned eval, safety core, probes, single-task scores,
task cores, clusters, and the fusion when the row freezes the core as the reference does), so every
row pays only for its own pipelined SFT and evaluation. All rows train on the same examples.

    python benchmarks/protection_study.py --seeds 0 1 2 --output-root runs/study
    python benchmarks/protection_study.py --seeds 0 --rows freeze freeze+safety_mix --output-root /tmp/s budget.examples_per_method=600

Prints one table (mean ± sample sd, then the per-seed values) and, with `--json`, writes every number.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROWS = {
    "none": [],
    "freeze": ["freeze"],
    "safety_mix": ["safety_mix"],
    "freeze+safety_mix": ["freeze", "safety_mix"],
    "freeze+direction": ["freeze", "direction"],
    "freeze+projection": ["freeze", "projection"],
    "freeze+token_kl": ["freeze", "token_kl"],
    "freeze+repair": ["freeze", "repair"],
    "freeze+safety_mix+token_kl": ["freeze", "safety_mix", "token_kl"],
    "freeze+safety_mix+repair": ["freeze", "safety_mix", "repair"],
    "all": ["freeze", "safety_mix", "direction", "projection", "token_kl", "repair"],
}
BASELINES = ["multitask_sft", "safety_mix_sft", "sppft", "resta", "cpift"]
SHARED_STAGES = ("aligned_eval", "safety_core", "single_task", "task_cores", "clusters")
METRICS = ("refusal_rate", "over_refusal_rate", "task_mean", "train_seconds")


def reuse_stages(reference: Path, target: Path, spec, with_fusion: bool) -> list[str]:
    """Open `target` as a run of `spec` and copy the composition-independent stages of `reference` into it."""
    from safe_cpift.pipeline.rundir import RunDirectory

    inputs = {"aligned_model": str(spec.aligned_model), "base_model": str(spec.base_model)}
    RunDirectory.open(target, spec.recipe, seed=spec.seed, resume=False, name=spec.name, inputs=inputs)
    names = [*SHARED_STAGES, *[p.name for p in reference.glob("probe_*")], *(["fusion"] if with_fusion else [])]
    for name in names:
        if (reference / name / "stage.json").is_file():
            shutil.copytree(reference / name, target / name)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="toy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--output-root", default="runs/study")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from safe_cpift.commands.run import _recipe_path
    from safe_cpift.pipeline.from_recipe import spec_from_recipe
    from safe_cpift.pipeline.runner import run_pipeline, run_spec
    from safe_cpift.pipeline.seeds import summarize
    from safe_cpift.recipe import load_recipe
    from safe_cpift.runtime import configure_runtime, set_offline

    set_offline()
    path = _recipe_path(args.recipe)
    root = Path(args.output_root)
    values: dict[str, dict[str, list]] = {}
    wall: dict[str, float] = {}

    def record(row: str, method_result: dict) -> None:
        for key in METRICS:
            values.setdefault(row, {}).setdefault(key, []).append(method_result.get(key))

    for seed in args.seeds:
        base = [*args.overrides, f"seed={seed}"]
        recipe = load_recipe(path, overrides=[*base, f"baselines={json.dumps(BASELINES)}"])
        configure_runtime(recipe.num_threads)
        ref_dir = root / f"seed_{seed}" / "reference"
        start = time.perf_counter()
        ref = run_pipeline(recipe, ref_dir, resume=(ref_dir / "manifest.json").is_file())
        wall[f"{seed}/reference"] = time.perf_counter() - start
        for m in ["aligned", *BASELINES]:
            record(m, ref["methods"][m])
        record(f"safe_cpift[{'+'.join(recipe.protect.safe_cpift)}] (reference)", ref["methods"]["safe_cpift"])
        for row in args.rows:
            comp = ROWS[row]
            r = load_recipe(path, overrides=[*base, "baselines=[]", f"protect.safe_cpift={json.dumps(comp)}"])
            spec = spec_from_recipe(r)
            out = root / f"seed_{seed}" / row
            start = time.perf_counter()
            if not (out / "manifest.json").is_file():
                reuse_stages(ref_dir, out, spec, with_fusion="freeze" in comp and "freeze" in recipe.protect.safe_cpift)
            res = run_spec(spec, out, resume=True)
            wall[f"{seed}/{row}"] = time.perf_counter() - start
            record(f"safe_cpift[{row}]", res["methods"]["safe_cpift"])
            print(f"seed {seed} {row}: refusal {res['methods']['safe_cpift']['refusal_rate']:.3f} "
                  f"over-refusal {res['methods']['safe_cpift']['over_refusal_rate']:.3f} "
                  f"task {res['methods']['safe_cpift']['task_mean']:.3f} ({wall[f'{seed}/{row}']:.0f}s)",
                  file=sys.stderr, flush=True)

    summary = {row: {k: summarize(v) for k, v in metrics.items()} for row, metrics in values.items()}
    print(f"protection study: {args.recipe} {' '.join(args.overrides)} over seeds {args.seeds}; mean ± sample sd "
          "(per-seed values after the bar)")
    print("| row | refusal ↑ | over-refusal ↓ | task mean ↑ | train s | refusal per seed | over-refusal per seed "
          "| task mean per seed |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    for row, s in summary.items():
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}" if s[k]["mean"] is not None else "–" for k in METRICS[:3]]
        cells.append(f"{s['train_seconds']['mean']:.0f}" if s["train_seconds"]["mean"] is not None else "–")
        cells += [" / ".join(f"{v:.3f}" for v in s[k]["values"] if v is not None) for k in METRICS[:3]]
        print(f"| {row} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "overrides": args.overrides, "wall_seconds": wall,
                                               "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
