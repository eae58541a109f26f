"""`safe-cpift demo`: the complete Safe-CPI-FT run and its baselines on the built-in tiny world.

`safe-cpift demo` runs the `toy` recipe (recipes/toy.yaml); `--quick` runs it with smaller training
budgets and evaluation sets; `--aligned-only` just builds (or loads) the aligned model and evaluates it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "runs/demo"
DEMO_RECIPE = "toy"
# `--quick`: a quarter of the demo's 8,384 examples per method (2,096: task probes of 32, half the safety
# probe's 512, 1,776 for the final fine-tuning) and the quick evaluation sets (100 prompts each).
QUICK_OVERRIDES = (
    "toyworld.quick=true",
    "cpift.probe_examples=32",
    "safety.core.probe_examples=256",
    "budget.examples_per_method=1776",
    "eval.task_examples=50",
)


def demo_recipe(seed: int = 0, quick: bool = False, overrides: Sequence[str] = ()) -> Any:
    """The demo's `Recipe`: recipes/toy.yaml with the seed, `--quick` sizes and user overrides applied."""
    from safe_cpift.recipe import find_recipe, load_recipe

    applied = [f"seed={seed}", *(QUICK_OVERRIDES if quick else ()), *overrides]
    return load_recipe(find_recipe(DEMO_RECIPE), overrides=applied)


def run_demo(
    output_dir: str | Path,
    seed: int = 0,
    quick: bool = False,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run Safe-CPI-FT and its baselines on the tiny world; write the run directory and report.

    Args:
        output_dir (`str` or `Path`): run directory (results.json, report.md, plots, final_model/).
        seed (`int`, *optional*, defaults to `0`): run seed (the world itself is built with its own seed).
        quick (`bool`, *optional*, defaults to `False`): smaller training budgets and evaluation sets.
        resume (`bool`, *optional*, defaults to `False`): continue an interrupted demo run.
        overrides (`Sequence[str]`, *optional*): recipe overrides such as `cpift.top_p=0.02`.

    Returns:
        `dict`: the results written to `output_dir/results.json`.
    """
    from safe_cpift.pipeline.runner import run_pipeline
    from safe_cpift.runtime import configure_runtime, set_offline

    set_offline()
    recipe = demo_recipe(seed, quick, overrides)
    configure_runtime(recipe.num_threads)
    command = " ".join(["safe-cpift demo", *(["--quick"] if quick else []), f"--seed {seed}",
                        f"--output-dir {output_dir}", *overrides])
    return run_pipeline(recipe, output_dir, resume=resume, command=command)


def run_aligned_only(output_dir: str | Path, seed: int = 0, quick: bool = False, *, config: Any = None) -> dict[str, Any]:
    """Build or load the tiny world's aligned model, evaluate it and write `output_dir/results.json`.

    Args:
        output_dir (`str` or `Path`): directory for `results.json` (written atomically).
        seed (`int`, *optional*, defaults to `0`): world seed.
        quick (`bool`, *optional*, defaults to `False`): smaller evaluation sets (same models).
        config (`ToyWorldConfig`, *optional*): a custom world (its `seed`/`quick` are replaced by the
            arguments); the default world otherwise.

    Returns:
        `dict`: the results written (`methods.aligned`, `reference`, `world`).
    """
    from safe_cpift.io import atomic_write_json
    from safe_cpift.models import load_causal_lm, load_tokenizer
    from safe_cpift.runtime import configure_runtime, set_offline
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig, build_info

    set_offline()
    configure_runtime()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config or ToyWorldConfig(), seed=seed, quick=quick)
    world = ToyWorld(config)
    cached = world.is_built("aligned")
    start = time.perf_counter()
    path = world.aligned_model_path()
    build_seconds = time.perf_counter() - start
    info = build_info(path)
    from safe_cpift.runtime import resolve_device

    aligned = dict(world.evaluate(load_causal_lm(path, device=resolve_device()), load_tokenizer(path)))
    aligned["train_seconds"] = 0.0 if cached else float(info.get("train_seconds", 0.0))
    aligned["train_seconds_source"] = "cached" if cached else "built"
    aligned["build_seconds"] = 0.0 if cached else build_seconds
    harmful, benign = world.safety_rows("test")
    results = {
        "methods": {"aligned": aligned},
        "reference": "aligned",
        "world": {
            "seed": seed, "quick": quick, "model_path": str(path), "params": info.get("params"),
            "pretrain_seconds": info.get("pretrain_seconds"), "align_seconds": info.get("train_seconds"),
            "tasks": list(world.task_names),
            "eval_sizes": {"task_test": len(world.task_rows(world.task_names[0], "test")),
                           "harmful": len(harmful), "benign": len(benign)},
        },
    }
    atomic_write_json(out / "results.json", results)
    logger.info("wrote %s", out / "results.json")
    return results


def summary(results: dict[str, Any]) -> str:
    """A short human summary of aligned-only `results`: one line per method."""
    lines = []
    for name, m in results["methods"].items():
        tasks = ", ".join(f"{k} {v:.2f}" for k, v in m["task_scores"].items())
        lines.append(f"{name}: refusal {m['refusal_rate']:.3f}, over-refusal {m['over_refusal_rate']:.3f}, "
                     f"task mean {m['task_mean']:.3f} ({tasks}), train {m['train_seconds']:.0f}s")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    from safe_cpift.commands.run import split_seeds

    split_seeds(args)
    from safe_cpift.commands.run import apply_device

    if args.seed < 0:
        raise ValueError(f"`--seed` must be >= 0, got {args.seed}")
    apply_device(args)
    if not args.aligned_only:
        from safe_cpift.commands.run import run_with_console
        from safe_cpift.runtime import configure_runtime, set_offline

        set_offline()
        recipe = demo_recipe(args.seed, args.quick, args.overrides)
        configure_runtime(recipe.num_threads)
        seeds = f"--seeds {' '.join(map(str, args.seeds))}" if args.seeds else f"--seed {args.seed}"
        command = " ".join(["safe-cpift demo", *(["--quick"] if args.quick else []), seeds,
                            f"--output-dir {args.output_dir}", *args.overrides])
        args.stop_after = None
        return run_with_console(lambda seed: demo_recipe(seed, args.quick, args.overrides), recipe,
                                args.output_dir, args, command)
    results = run_aligned_only(args.output_dir, seed=args.seed, quick=args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(summary(results))
        print(f"results: {Path(args.output_dir) / 'results.json'}")
    return 0


def register(subparsers: Any) -> None:
    """Add the `demo` verb."""
    from safe_cpift.commands.run import add_console_arguments

    p = subparsers.add_parser(
        "demo", help="Safe-CPI-FT and its baselines on the built-in tiny world (offline; CPU, or a GPU with --device)",
        description="Run recipes/toy.yaml: the aligned tiny Llama learns two conflicting counting tasks with every method; "
                    "the report shows task gains against safety retention.",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. cpift.top_p=0.02")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"run directory (default {DEFAULT_OUTPUT_DIR})")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--quick", action="store_true", help="smaller training budgets and evaluation sets")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    p.add_argument("--aligned-only", action="store_true",
                   help="only build (or load) the aligned model and evaluate it")
    add_console_arguments(p)
    p.set_defaults(func=_main)
