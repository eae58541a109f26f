"""Safe LoRA's projection at several settings, on the adapters of a multi-seed run: no retraining.

    safe-cpift run recipes/toy.yaml 'baselines=[multitask_sft,lora_sft,safe_lora]' --seeds 0 1 2 --output-dir runs/sl
    python benchmarks/safe_lora_sweep.py 'baselines=[multitask_sft,lora_sft,safe_lora]' --reference-root runs/sl \
        --output-root runs/sl_sweep --settings safe_lora_layers=1 safe_lora_layers=2 safe_lora_layers=4

For each seed and setting, a run directory of the recipe with `protect.<setting>` is opened, every
finished stage of the reference run except `safe_lora` and its evaluation is copied in, and the run is
resumed: only `safe_lora` (the projection of the same `lora_sft` adapter), `eval_safe_lora` and the
report are computed. A `lora_*` setting (e.g. `lora_learning_rate=5e-5`) changes the adapter, so for
it `lora_sft` is retrained too and its row shows both. Pass the reference run's overrides as
positional `key=value`s.

Prints one table (mean ± sample sd, then the per-seed values); `--json` writes every number.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

RECOMPUTED = ("safe_lora", "eval_safe_lora", "report")
RETRAINED = ("lora_sft", "eval_lora_sft")  # also recomputed for a `lora_*` setting
METRICS = ("refusal_rate", "over_refusal_rate", "task_mean")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="toy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reference-root", required=True, help="a multi-seed run holding seed_<n>/ with lora_sft")
    parser.add_argument("--output-root", default="runs/safe_lora_sweep")
    parser.add_argument("--settings", nargs="+", required=True, metavar="KEY=VALUE",
                        help="protect.* settings, one row each, e.g. safe_lora_layers=2 safe_lora_threshold=0.45")
    parser.add_argument("--json", help="write every number to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from safe_cpift.commands.run import _recipe_path
    from safe_cpift.pipeline.from_recipe import spec_from_recipe
    from safe_cpift.pipeline.rundir import STAGE_FILE, RunDirectory
    from safe_cpift.pipeline.runner import run_spec
    from safe_cpift.pipeline.seeds import summarize
    from safe_cpift.recipe import load_recipe
    from safe_cpift.runtime import configure_runtime, set_offline

    set_offline()
    path = _recipe_path(args.recipe)
    rows: dict[str, dict[str, list]] = {}
    for seed in args.seeds:
        reference = Path(args.reference_root) / f"seed_{seed}"
        ref = json.loads((reference / "results.json").read_text())["methods"]
        for name in ("lora_sft", "safe_lora"):
            label = name if name == "lora_sft" else "safe_lora (reference)"
            for key in METRICS:
                rows.setdefault(label, {}).setdefault(key, []).append(ref[name][key])
            rows[label].setdefault("projected", []).append(
                len(json.loads((reference / "safe_lora" / STAGE_FILE).read_text())["projected"]) if name != "lora_sft"
                else 0)
        for setting in args.settings:
            recipe = load_recipe(path, overrides=[*args.overrides, f"seed={seed}", f"protect.{setting}"])
            configure_runtime(recipe.num_threads)
            spec = spec_from_recipe(recipe)
            out = Path(args.output_root) / setting.replace("=", "_") / f"seed_{seed}"
            if not (out / "manifest.json").is_file():
                RunDirectory.open(out, spec.recipe, seed=spec.seed, resume=False, name=spec.name,
                                  inputs={"aligned_model": str(spec.aligned_model), "base_model": str(spec.base_model)})
                skip = RECOMPUTED + (RETRAINED if setting.startswith("lora_") else ())
                for stage in sorted(reference.iterdir()):
                    if (stage / STAGE_FILE).is_file() and stage.name not in skip:
                        shutil.copytree(stage, out / stage.name)
            methods = run_spec(spec, out, resume=True)["methods"]
            got = methods["safe_lora"]
            if setting.startswith("lora_"):
                for key in METRICS:
                    rows.setdefault(f"lora_sft {setting}", {}).setdefault(key, []).append(methods["lora_sft"][key])
                rows[f"lora_sft {setting}"].setdefault("projected", []).append(0)
            stage = json.loads((out / "safe_lora" / STAGE_FILE).read_text())
            projected = len(stage["projected"])
            kept = sorted((stage.get("kept_norm") or {}).values())
            if kept:  # how much of a projected layer's update C keeps: ‖C ΔW‖_F / ‖ΔW‖_F
                print(f"seed {seed} {setting}: projected layers keep {kept[0]:.3f}–{kept[-1]:.3f} of their update's "
                      "norm", file=sys.stderr, flush=True)
            for key in METRICS:
                rows.setdefault(f"safe_lora {setting}", {}).setdefault(key, []).append(got[key])
            rows[f"safe_lora {setting}"].setdefault("projected", []).append(projected)
            print(f"seed {seed} {setting}: {projected} layers projected, refusal {got['refusal_rate']:.3f} "
                  f"over-refusal {got['over_refusal_rate']:.3f} task {got['task_mean']:.3f}", file=sys.stderr, flush=True)

    summary = {row: {k: summarize(v) for k, v in values.items()} for row, values in rows.items()}
    print(f"Safe LoRA sweep: {args.recipe} {' '.join(args.overrides)} over seeds {args.seeds}; mean ± sample sd "
          "(per-seed values after the bar)")
    print("| row | layers projected | refusal ↑ | over-refusal ↓ | task mean ↑ | refusal per seed | task mean per seed |")
    print("|---|---|---:|---:|---:|---|---|")
    for row, s in summary.items():
        cells = [" / ".join(str(int(v)) for v in s["projected"]["values"])]
        cells += [f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}" for k in METRICS]
        cells += [" / ".join(f"{v:.3f}" for v in s[k]["values"]) for k in ("refusal_rate", "task_mean")]
        print(f"| {row} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "overrides": args.overrides,
                                               "settings": args.settings, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
