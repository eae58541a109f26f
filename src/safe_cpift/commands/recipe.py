"""`safe-cpift recipe schema [--eval]` and `safe-cpift recipe check FILE [key=value ...]`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# top-level keys only one kind of recipe has (`recipe check` tells run and eval recipes apart by them)
RUN_ONLY = {"safety", "tasks", "cpift", "training", "baselines", "eval", "budget", "toyworld", "attack", "seed",
            "output_dir", "num_threads"}
EVAL_ONLY = {"suites", "data", "metric", "judge", "generation", "lm_eval", "out", "dtype"}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "recipe", help="recipe tools: the JSON Schema for editors, or check a recipe without running it",
        description="Recipe tools. `schema` writes the JSON Schema that editors (VS Code's YAML extension) use for "
        "completion and inline errors; `check` validates a recipe and prints it resolved.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    schema = verbs.add_parser("schema", help="print the JSON Schema of run recipes (or eval recipes with --eval)")
    schema.add_argument("--eval", action="store_true", help="the schema of eval recipes (`safe-cpift eval --config`)")
    schema.set_defaults(func=schema_main)
    check = verbs.add_parser("check", help="validate a recipe without running it and print the resolved recipe")
    check.add_argument("recipe", help="recipe YAML file, or the name of a built-in recipe (e.g. `toy`)")
    check.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. cpift.top_p=0.02")
    check.add_argument("--kind", choices=("auto", "run", "eval"), default="auto",
                       help="recipe kind (default: told apart by its top-level keys)")
    check.add_argument("--json", action="store_true", help="print the resolved recipe as JSON instead of YAML")
    check.set_defaults(func=check_main)


def schema_text(eval_recipe: bool = False) -> str:
    """The JSON Schema of run recipes (or eval recipes) as the text `recipe schema` prints."""
    if eval_recipe:
        from safe_cpift.evals.eval_recipe import eval_recipe_json_schema as make
    else:
        from safe_cpift.recipe import recipe_json_schema as make
    return json.dumps(make(), indent=2, ensure_ascii=False) + "\n"


def schema_main(args: argparse.Namespace) -> int:
    print(schema_text(args.eval), end="")
    return 0


def recipe_kind(raw: Any) -> str:
    """`"eval"` for a mapping with eval-recipe keys and no run-recipe keys, else `"run"`."""
    keys = set(raw) if isinstance(raw, Mapping) else set()
    return "eval" if keys & EVAL_ONLY and not keys & RUN_ONLY else "run"


def check_main(args: argparse.Namespace) -> int:
    import yaml

    from safe_cpift.commands.run import _recipe_path

    path = Path(_recipe_path(args.recipe))
    kind = args.kind
    if kind == "auto":
        try:
            kind = recipe_kind(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
            kind = "run"  # the loader below reports the problem
    if kind == "eval":
        from safe_cpift.evals.eval_recipe import load_eval_recipe

        resolved = load_eval_recipe(path, overrides=args.overrides).model_dump()
    else:
        from safe_cpift.recipe import load_recipe

        resolved = load_recipe(path, overrides=args.overrides).to_dict()
    if args.json:
        print(json.dumps(resolved, indent=2))
    else:
        done = "defaults filled in, overrides applied" + (", data paths beside it made absolute" if kind == "run" else "")
        print(f"# {path}: a valid {kind} recipe, resolved ({done}):")
        print(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), end="")
    return 0
