"""`safe-cpift run RECIPE.yaml [key=value ...] [--output-dir DIR] [--seeds N ...] [--resume] [--stop-after STAGE]
[--json] [--verbose]`.

The terminal shows one line per stage and a bar for the stage that trains; library logs and warnings
go to `run.log` in the output directory (`--verbose` shows them too). With `--seeds`, each seed runs
in `<output-dir>/seed_<n>/` and `<output-dir>/results.json` holds mean, sd and per-seed values.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
from collections.abc import Callable
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="run a recipe: Safe-CPI-FT with its baselines, resumable stages, a report",
        description="Run the complete Safe-CPI-FT procedure and its baselines as described by a recipe.",
    )
    p.add_argument("recipe", help="recipe YAML file, or the name of a built-in recipe (e.g. `toy`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. cpift.top_p=0.02 seed=1")
    p.add_argument("--output-dir", help="run directory (default: the recipe's `output_dir`)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run after its last complete stage")
    p.add_argument("--stop-after", metavar="STAGE", help="stop cleanly after this stage (e.g. clusters)")
    add_console_arguments(p)
    p.set_defaults(func=main)


def add_console_arguments(p: argparse.ArgumentParser) -> None:
    """`--seeds`, `--json`, `--device` and `--verbose`, shared by `run` and `demo`."""
    p.add_argument("--seeds", nargs="+", metavar="N",
                   help="run once per seed into OUTPUT_DIR/seed_<n>/ and aggregate (mean, sd, per-seed values); "
                        "key=value overrides may follow")
    p.add_argument("--json", action="store_true", help="print results.json instead of the summary table")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="train and evaluate on this device (default: $SAFE_CPIFT_DEVICE, else auto = a GPU when present)")
    p.add_argument("--verbose", dest="run_verbose", action="store_true",
                   help="show library logs, warnings and progress bars on the terminal (always in run.log)")


def split_seeds(args: argparse.Namespace) -> None:
    """`--seeds 0 1 2 cpift.tau=0.2`: the seeds are the integers; `key=value` words after them are
    recipe overrides (argparse gives every word after `--seeds` to it). Anything else is an error."""
    if not args.seeds:
        return
    seeds = []
    for word in args.seeds:
        if "=" in word:
            args.overrides.append(word)
        elif word.isdigit():
            seeds.append(int(word))
        else:
            raise ValueError(f"`--seeds` takes integers >= 0 (e.g. `--seeds 0 1 2`), got {word!r}")
    if not seeds:
        raise ValueError("`--seeds` names no seed: give integers, e.g. `--seeds 0 1 2`")
    args.seeds = seeds


def _recipe_path(name: str) -> str:
    from pathlib import Path

    if Path(name).exists() or name.endswith((".yaml", ".yml")):
        return name
    from safe_cpift.recipe import find_recipe

    return str(find_recipe(name))


def apply_device(args: argparse.Namespace) -> None:
    """Make `--device` the process's device (checked now, so `cuda` without a GPU fails before any stage)."""
    import os

    from safe_cpift.runtime import DEVICE_VARIABLE, resolve_device

    if getattr(args, "device", None):
        resolve_device(args.device)
        os.environ[DEVICE_VARIABLE] = args.device


def main(args: argparse.Namespace) -> int:
    split_seeds(args)
    from safe_cpift.recipe import load_recipe
    from safe_cpift.runtime import configure_runtime

    apply_device(args)
    path = _recipe_path(args.recipe)
    recipe = load_recipe(path, overrides=args.overrides)
    configure_runtime(recipe.num_threads)
    out = args.output_dir or recipe.output_dir
    if out is None:
        raise ValueError("no run directory: pass `--output-dir` or set `output_dir` in the recipe")
    # the command that reproduces the run (without --resume / --stop-after), quoted in report.md
    command = " ".join(["safe-cpift run", shlex.quote(args.recipe), *map(shlex.quote, args.overrides),
                        f"--output-dir {shlex.quote(str(out))}"]
                       + ([f"--seeds {' '.join(map(str, args.seeds))}"] if args.seeds else []))
    return run_with_console(lambda seed: load_recipe(path, overrides=[*args.overrides, f"seed={seed}"]),
                            recipe, out, args, command)


def run_with_console(recipe_for_seed: Callable[[int], Any], recipe: Any, out: Any, args: argparse.Namespace,
                     command: str) -> int:
    """Run one recipe (or one per `--seeds`) with stage lines on the terminal and logs in run.log."""
    from safe_cpift.commands.console import run_console
    from safe_cpift.pipeline.progress import StagePrinter
    from safe_cpift.pipeline.runner import run_pipeline

    verbose = bool(getattr(args, "verbose", False) or getattr(args, "run_verbose", False))
    printer = StagePrinter()
    if args.seeds and args.stop_after:
        raise ValueError("`--stop-after` stops one run; it cannot be combined with `--seeds`")
    with run_console(out, verbose=verbose) as log:
        printer.line(f"safe-cpift: run directory {out} (log: {log})")
        if args.seeds:
            from safe_cpift.pipeline.seeds import run_seeds

            results = run_seeds(recipe_for_seed, args.seeds, out, resume=args.resume, command=command,
                                run_one=functools.partial(run_pipeline, observer=printer),
                                on_seed=lambda seed, d: printer.line(f"— seed {seed} → {d}"))
        else:
            results = run_pipeline(recipe, out, resume=args.resume, stop_after=args.stop_after,
                                   command=command, observer=printer)
    if args.seeds:
        print_seeds_outcome(results, out, as_json=args.json)
        return 1 if results["failed_seeds"] else 0
    print_outcome(results, out, as_json=args.json)
    return 0


def print_seeds_outcome(results: dict[str, Any], out: Any, *, as_json: bool = False) -> None:
    """Print a multi-seed run: JSON, or the mean ± sd table and any failed seeds."""
    from safe_cpift.seeds_report import seeds_table

    if as_json:
        print(json.dumps(results, indent=2))
        return
    print(f"seeds {', '.join(map(str, results['completed_seeds']))}: mean ± sd")
    print(seeds_table(results))
    for seed in results["failed_seeds"]:
        print(f"seed {seed} FAILED (not averaged in): {results['errors'].get(str(seed))}")
    print(f"report: {out}/report.md")


def print_outcome(results: dict[str, Any], out: Any, *, as_json: bool = False) -> None:
    """Print a pipeline run's results: JSON, the stop notice, or the methods table + integrity line."""
    from safe_cpift.report import integrity_line, methods_table

    if as_json:
        print(json.dumps(results, indent=2))
    elif "stopped_after" in results:
        print(f"stopped after stage `{results['stopped_after']}` in {out}; continue with --resume")
    else:
        print(methods_table(results))
        print(integrity_line(results))
        print(f"report: {out}/report.md")
