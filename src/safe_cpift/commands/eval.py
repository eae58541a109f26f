"""`safe-cpift eval`: refusal, over-refusal, task and lm-eval suites on a model, or a saved eval recipe."""

from __future__ import annotations

import argparse
import json

EPILOG = """examples:
  safe-cpift eval --model ./my-model --suite refusal,overrefusal
  safe-cpift eval --model ./my-model --suite refusal,overrefusal --limit 40 --out quick.json
  safe-cpift eval --model toy:aligned --suite refusal,overrefusal,tasks --out eval.json
  safe-cpift eval --model ./my-model --suite overrefusal --data xstest_prompts.csv --out xstest.json
  safe-cpift eval --model ./my-model --suite lm-eval:arc_easy,hellaswag --limit 200 --out cap.json
  safe-cpift eval --config recipes/eval_toy.yaml
  safe-cpift eval --config recipes/eval_toy.yaml --compare toy:aligned ./finetuned --out compare.json
Suites: refusal (harmful prompts -> refusal rate, higher is safer), overrefusal (benign look-alikes ->
refusal rate, lower is better), tasks (per-task metric), lm-eval:<task>[,<task>] (any lm-eval task;
ours are in evals/). Without --data, refusal and overrefusal use XSTest's unsafe and safe prompts
(shipped with safe-cpift, no network; Roettger et al., NAACL 2024, CC-BY-4.0) for any model, and the
tiny world's held-out sets for the tiny world's own models; the output names the set used and the
over-refusal rate per XSTest prompt type. toy:aligned / toy:base name the tiny world's models (built
and cached on first use)."""


def _recipe_from_args(args: argparse.Namespace):
    from safe_cpift.evals.eval_recipe import EvalRecipe, load_eval_recipe
    from safe_cpift.evals.suites import parse_suites

    if args.config:
        if args.suite or args.data:
            raise ValueError("`--suite`/`--data` go in the recipe when `--config` is used")
        recipe = load_eval_recipe(args.config)
    else:
        if not args.suite:
            raise ValueError("pass `--suite` (refusal, overrefusal, tasks, lm-eval:<task>) or `--config RECIPE.yaml`")
        suites = parse_suites(args.suite)
        data = {s: args.data for s in suites if s in ("refusal", "overrefusal", "tasks")} if args.data else {}
        recipe = EvalRecipe(model=args.model, suites=suites, data=data)
    if args.judge:
        recipe.judge = args.judge
    if args.metric:
        recipe.metric = args.metric
    for key in ("max_new_tokens", "batch_size", "seed"):
        if getattr(args, key) is not None:
            recipe.generation[key] = getattr(args, key)
    if args.system_prompt is not None:
        recipe.generation["system_prompt"] = args.system_prompt
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"`--limit` must be >= 1, got {args.limit}")
        recipe.limit = args.limit
        recipe.lm_eval["limit"] = args.limit
    if args.apply_chat_template:
        recipe.lm_eval["apply_chat_template"] = True
    return recipe


def run(args: argparse.Namespace) -> int:
    from safe_cpift.evals.eval_recipe import compare_results, format_summary, run_eval, write_results
    from safe_cpift.runtime import configure_runtime

    configure_runtime()
    recipe = _recipe_from_args(args)
    progress = not args.json
    if args.compare:
        if args.model:
            raise ValueError("use either `--model` or `--compare MODEL_A MODEL_B`, not both")
        a_spec, b_spec = args.compare
        # both models on the same sets: the defaults of model A when the recipe names none
        a = run_eval(recipe, model=a_spec, out=None, progress=progress)
        b = run_eval(recipe, model=b_spec, out=None, progress=progress, defaults_from=a_spec)
        comparison = compare_results(a, b)
        result = {"comparison": comparison, "a": a, "b": b}
        target = args.out or recipe.out
        if target:
            write_results(target, result)
        if args.json:
            print(json.dumps(comparison))
        else:
            print(f"A = {a_spec}\nB = {b_spec}")
            width = max([len("suite"), *map(len, comparison["suites"])]) + 2
            print(f"  {'suite':<{width}} {'A':>7} {'B':>7} {'B - A':>8}")
            for suite, d in comparison["suites"].items():
                arrow = "higher is better" if d["higher_is_better"] else "lower is better"
                print(f"  {suite:<{width}} {d['a']:7.3f} {d['b']:7.3f} {d['delta']:+8.3f}  {d['verdict']} ({arrow})")
            if target:
                print(f"wrote {target}")
        return 0
    if not (args.model or recipe.model):
        raise ValueError("pass `--model` (a directory, hub id or toy:aligned) or set `model` in the recipe")
    results = run_eval(recipe, model=args.model, out=args.out, progress=progress)
    target = args.out or recipe.out
    if args.json:
        print(json.dumps({"model": results["model"], "summary": results["summary"], "sets": results["sets"]}))
    else:
        print(format_summary(results))
        print(f"wrote {target}" if target else "(per-example replies not kept: pass --out FILE.json)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="measure refusal, over-refusal, task and lm-eval scores of a model",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, help="model directory, hub id, or toy:aligned / toy:base")
    p.add_argument("--suite", default=None, metavar="S[,S...]",
                   help="refusal | overrefusal | tasks | lm-eval:<task>[,<task>] (comma-separated)")
    p.add_argument("--data", default=None, metavar="FILE|SET",
                   help="data for the refusal/overrefusal/tasks suites: a file or a set name (xstest:unsafe, "
                        "xstest:safe, advbench, ...); default: XSTest (bundled), or the tiny world's held-out "
                        "sets for its own models")
    p.add_argument("--config", default=None, metavar="RECIPE.yaml", help="a saved eval recipe")
    p.add_argument("--compare", nargs=2, default=None, metavar=("MODEL_A", "MODEL_B"),
                   help="run the suites on two models and report B - A per suite")
    p.add_argument("--out", default=None,
                   help="results JSON (written atomically; per-example records included); without it only the "
                        "summary is printed")
    p.add_argument("--judge", default=None, metavar="rules|model:PATH", help="refusal judge (default: rules)")
    p.add_argument("--metric", default=None,
                   help="task metric: exact_match, contains, regex:ANSWER_PATTERN (extracted from reply and reference) or module:function")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default 48; 24/16 on the tiny world)")
    p.add_argument("--batch-size", type=int, default=None, help="generation batch size (default 64)")
    p.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    p.add_argument("--system-prompt", default=None, help="system message for every prompt")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="at most N prompts per safety suite (an even share of each prompt type), N examples per "
                        "task and per lm-eval task; for a quick look (default: all)")
    p.add_argument("--apply-chat-template", action="store_true", help="lm-eval: wrap prompts in the chat template")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)
