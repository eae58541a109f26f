"""`safe-cpift run RECIPE.yaml [--output-dir DIR] [--resume] [--stop-after STAGE] [key=value ...] [--json]`."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
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
    p.add_argument("--json", action="store_true", help="print results.json instead of the summary table")
    p.set_defaults(func=main)


def _recipe_path(name: str) -> str:
    from pathlib import Path

    if Path(name).exists() or name.endswith((".yaml", ".yml")):
        return name
    from safe_cpift.recipe import find_recipe

    return str(find_recipe(name))


def main(args: argparse.Namespace) -> int:
    from safe_cpift.pipeline.runner import run_pipeline
    from safe_cpift.recipe import load_recipe
    from safe_cpift.runtime import configure_runtime

    recipe = load_recipe(_recipe_path(args.recipe), overrides=args.overrides)
    configure_runtime(recipe.num_threads)
    out = args.output_dir or recipe.output_dir
    # the command that reproduces the run (without --resume / --stop-after), quoted in report.md
    command = " ".join(["safe-cpift run", shlex.quote(args.recipe), *map(shlex.quote, args.overrides)]
                       + ([f"--output-dir {shlex.quote(str(out))}"] if out else []))
    # the Trainer prints its logs to stdout; keep stdout for our summary / --json output
    with contextlib.redirect_stdout(sys.stderr):
        results = run_pipeline(recipe, out, resume=args.resume, stop_after=args.stop_after, command=command)
    print_outcome(results, out, as_json=args.json)
    return 0


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
