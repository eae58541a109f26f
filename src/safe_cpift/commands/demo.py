"""`safe-cpift demo`: build (or load) the tiny world's aligned model, evaluate it, write results.json."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "runs/demo"


def run_demo(output_dir: str | Path, seed: int = 0, quick: bool = False, *, config: Any = None) -> dict[str, Any]:
    """Build or load the tiny world's aligned model, evaluate it and write `output_dir/results.json`.

    Args:
        output_dir (`str` or `Path`): run directory (created; `results.json` written atomically).
        seed (`int`, *optional*, defaults to `0`): world seed.
        quick (`bool`, *optional*, defaults to `False`): smaller evaluation sets (same models).
        config (`ToyWorldConfig`, *optional*): a custom world (its `seed`/`quick` are replaced by the
            arguments); the default world otherwise.

    Returns:
        `dict`: the results written (`methods.aligned`, `reference`, `world`).
    """
    from safe_cpift.runtime import configure_runtime, set_offline

    set_offline()
    configure_runtime()
    from safe_cpift.io import atomic_write_json
    from safe_cpift.models import load_causal_lm, load_tokenizer
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig, build_info

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    import dataclasses

    config = dataclasses.replace(config or ToyWorldConfig(), seed=seed, quick=quick)
    world = ToyWorld(config)
    cached = world.is_built("aligned")
    start = time.perf_counter()
    path = world.aligned_model_path()
    build_seconds = time.perf_counter() - start
    info = build_info(path)
    model = load_causal_lm(path)
    tokenizer = load_tokenizer(path)
    scores = world.evaluate(model, tokenizer)
    aligned = dict(scores)
    aligned["train_seconds"] = 0.0 if cached else float(info.get("train_seconds", 0.0))
    aligned["train_seconds_source"] = "cached" if cached else "built"
    aligned["build_seconds"] = 0.0 if cached else build_seconds
    results = {
        "methods": {"aligned": aligned},
        "reference": "aligned",
        "world": {
            "seed": seed, "quick": quick, "model_path": str(path), "params": info.get("params"),
            "pretrain_seconds": info.get("pretrain_seconds"), "align_seconds": info.get("train_seconds"),
            "tasks": list(world.task_names),
            "eval_sizes": {"task_test": len(world.task_rows(world.task_names[0], "test")),
                           "harmful": len(world.safety_rows("test")[0]), "benign": len(world.safety_rows("test")[1])},
        },
    }
    atomic_write_json(out / "results.json", results)
    logger.info("wrote %s", out / "results.json")
    return results


def summary(results: dict[str, Any]) -> str:
    """A short human summary of `results`."""
    lines = []
    for name, m in results["methods"].items():
        tasks = ", ".join(f"{k} {v:.2f}" for k, v in m["task_scores"].items())
        lines.append(f"{name}: refusal {m['refusal_rate']:.3f}, over-refusal {m['over_refusal_rate']:.3f}, "
                     f"task mean {m['task_mean']:.3f} ({tasks}), train {m['train_seconds']:.0f}s")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise ValueError(f"`--seed` must be >= 0, got {args.seed}")
    results = run_demo(args.output_dir, seed=args.seed, quick=args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(summary(results))
        print(f"results: {Path(args.output_dir) / 'results.json'}")
    return 0


def register(subparsers: Any) -> None:
    """Add the `demo` verb."""
    p = subparsers.add_parser("demo", help="build the tiny world's aligned model, evaluate it, write results.json")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=f"run directory (default {DEFAULT_OUTPUT_DIR})")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--quick", action="store_true", help="smaller evaluation sets (finishes in minutes)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=_main)
