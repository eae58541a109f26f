"""The protection study: each protection alone and in compositions, beside the baselines, over seeds.

For every seed a *reference* run of the recipe trains its baselines (multitask_sft, sequential_sft,
safety_mix_sft = SafeInstr, cpift) and safe_cpift with the recipe's composition — either run here, or
taken from a multi-seed run directory (`--reference-root D`, e.g. from `safe-cpift demo --seeds 0 1 2
--output-dir D`). Then each row runs only what it changes, reusing the reference's stages that do not
depend on it (aligned eval, safety core, probes, single-task scores, task cores, clusters,
multitask_sft, and the fusion when the row freezes the core as the reference does):

* a composition row runs safe_cpift's pipelined SFT (and repair) with `protect.safe_cpift` = the row;
* a peer row (`sppft`, `resta`, `safe_lora`, `protected_sft`) runs that baseline beside the reference's
  safe_cpift (`safe_lora` also runs the `lora_sft` it projects, and reports both).

Every method and row trains on the same number of examples.

    safe-cpift demo --seeds 0 1 2 --output-dir runs/demo3
    python benchmarks/protection_study.py --seeds 0 1 2 --reference-root runs/demo3 --output-root runs/study

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
# a peer row runs these baselines beside the reference's safe_cpift (Safe LoRA projects lora_sft's adapter)
PEERS = {"sppft": ("sppft",), "resta": ("resta",), "safe_lora": ("lora_sft", "safe_lora"),
         "protected_sft": ("protected_sft",)}  # the last: multitask SFT with safe_cpift's protections
SHARED_STAGES = ("aligned_eval", "safety_core", "single_task", "task_cores", "clusters", "multitask_sft",
                 "eval_multitask_sft")
METRICS = ("refusal_rate", "over_refusal_rate", "task_mean", "train_seconds")


def reuse_stages(reference: Path, target: Path, spec, *, with_fusion: bool, with_safe_cpift: bool) -> list[str]:
    """Open `target` as a run of `spec` and copy the reference's stages that `spec` would compute identically."""
    from safe_cpift.pipeline.rundir import RunDirectory

    inputs = {"aligned_model": str(spec.aligned_model), "base_model": str(spec.base_model)}
    RunDirectory.open(target, spec.recipe, seed=spec.seed, resume=False, name=spec.name, inputs=inputs)
    names = [*SHARED_STAGES, *[p.name for p in reference.glob("probe_*")]]
    if with_fusion or with_safe_cpift:
        names.append("fusion")
    if with_safe_cpift:
        names += [p.name for p in reference.glob("sft_group_*")] + ["repair", "eval_safe_cpift"]
    copied = []
    for name in names:
        if (reference / name / "stage.json").is_file():
            shutil.copytree(reference / name, target / name)
            copied.append(name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="toy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=[*ROWS, *PEERS], choices=[*ROWS, *PEERS])
    parser.add_argument("--output-root", default="runs/study")
    parser.add_argument("--reference-root", help="a multi-seed run directory holding seed_<n>/ reference runs")
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
        recipe = load_recipe(path, overrides=base)
        configure_runtime(recipe.num_threads)
        if args.reference_root:
            ref_dir = Path(args.reference_root) / f"seed_{seed}"
            ref = json.loads((ref_dir / "results.json").read_text())
        else:
            ref_dir = root / f"seed_{seed}" / "reference"
            start = time.perf_counter()
            ref = run_pipeline(recipe, ref_dir, resume=(ref_dir / "manifest.json").is_file())
            wall[f"{seed}/reference"] = time.perf_counter() - start
        for m, result in ref["methods"].items():
            record(m if m != "safe_cpift" else f"safe_cpift[{'+'.join(recipe.protect.safe_cpift)}] (reference)", result)
        for row in args.rows:
            peer = row in PEERS
            extra = ([f"baselines=[{','.join(PEERS[row])}]"] if peer
                     else ["baselines=[]", f"protect.safe_cpift={json.dumps(ROWS[row])}"])
            spec = spec_from_recipe(load_recipe(path, overrides=[*base, *extra]))
            out = root / f"seed_{seed}" / row
            start = time.perf_counter()
            if not (out / "manifest.json").is_file():
                freeze = "freeze" in spec.protections and "freeze" in recipe.protect.safe_cpift
                reuse_stages(ref_dir, out, spec, with_fusion=freeze, with_safe_cpift=peer)
            res = run_spec(spec, out, resume=True)
            wall[f"{seed}/{row}"] = time.perf_counter() - start
            for name, method in ([(m, m) for m in PEERS[row]] if peer else [(f"safe_cpift[{row}]", "safe_cpift")]):
                got = res["methods"][method]
                record(name, got)
                print(f"seed {seed} {name}: refusal {got['refusal_rate']:.3f} over-refusal "
                      f"{got['over_refusal_rate']:.3f} task {got['task_mean']:.3f} ({wall[f'{seed}/{row}']:.0f}s)",
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
