"""Every method of a recipe over several seeds: mean ± sd of task mean, refusal and over-refusal.

One seed is not enough to rank the methods: on the tiny world the seed-to-seed spread of the refusal
rate was larger than most differences between methods. This runs the recipe once per seed (each run
resumable in its own directory) and prints, per method, mean ± sample sd over the seeds, plus the
training budget each method used.

    python benchmarks/methods_over_seeds.py --seeds 0 1 2 --output-root runs/seeds
    python benchmarks/methods_over_seeds.py --recipe recipes/toy.yaml --seeds 0 1 2 3 4 cpift.top_p=0.02

By default the tiny world itself stays the same (`toyworld.seed=0`) and only the run seed changes
(data order, mixes, training): pass `--vary-world` to rebuild the world per seed too (slower: each
world is pretrained and aligned once, then cached).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

METRICS = (("task_mean", "task mean"), ("refusal_rate", "refusal"), ("over_refusal_rate", "over-refusal"))


def summarize(runs: dict[int, dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> metric -> (mean, sample sd, n) over the runs' results."""
    from safe_cpift.pipeline.seeds import summarize as mean_sd  # the same mean and sample sd as `--seeds`

    methods = list(next(iter(runs.values()))["methods"])
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for m in methods:
        out[m] = {}
        for key, _ in (*METRICS, ("examples_seen", ""), ("train_seconds", "")):
            values = [r["methods"][m][key] for r in runs.values() if r["methods"][m].get(key) is not None]
            if values:
                s = mean_sd(values)
                out[m][key] = (s["mean"], s["sd"], len(values))
    return out


def table(summary: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    head = ["method", *[label for _, label in METRICS], "examples", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, row in summary.items():
        cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" if k in row else "n/a" for k, _ in METRICS]
        cells += [f"{row['examples_seen'][0]:.0f}", f"{row['train_seconds'][0]:.1f}"]
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/toy.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output-root", default="runs/seeds")
    parser.add_argument("--vary-world", action="store_true", help="also change the tiny world's seed")
    parser.add_argument("--json", help="also write the per-seed results and the summary to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    from safe_cpift.pipeline.runner import run_pipeline
    from safe_cpift.recipe import load_recipe
    from safe_cpift.runtime import configure_runtime, set_offline

    set_offline()
    runs, wall = {}, {}
    for seed in args.seeds:
        overrides = [*args.overrides, f"seed={seed}"]
        recipe = load_recipe(args.recipe, overrides=overrides)
        if not args.vary_world and recipe.uses_toyworld:
            recipe = load_recipe(args.recipe, overrides=[*overrides, "toyworld.seed=0"])
        configure_runtime(recipe.num_threads)
        out = Path(args.output_root) / f"seed{seed}"
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs to stdout
            runs[seed] = run_pipeline(recipe, out, resume=(out / "manifest.json").is_file())
        wall[seed] = time.perf_counter() - start
        print(f"seed {seed}: {wall[seed]:.0f}s wall, safety core intact={runs[seed]['safety_core']['intact']}",
              file=sys.stderr)
    summary = summarize(runs)
    print(f"{args.recipe} over seeds {args.seeds} ({'world varies' if args.vary_world else 'same world, run seed varies'}); "
          "mean ± sample sd")
    print(table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "wall_seconds": wall, "summary": summary,
                                               "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
