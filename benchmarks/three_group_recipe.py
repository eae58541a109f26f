"""A user's recipe with three dissimilar tasks in three data formats, as a new user would write it.

The tiny world's aligned model, its safety data, and three of its tasks exported as the user's own
files — `first_letter` as chat `messages`, `count_letters` as `prompt`/`completion`, `capitals` as
Alpaca `instruction`/`input`/`output` — run through `safe-cpift run` over seeds. It checks the
protections issue's pipeline criteria: `cpift` never below `sequential_sft` on a task, and its task
mean against `multitask_sft`'s.

    python benchmarks/three_group_recipe.py --out runs/three_group --seeds 0 1 2
    python benchmarks/three_group_recipe.py --out runs/three_group_balanced --seeds 0 1 2 \
        --set cpift.replay_fraction=balanced 'baselines=[sequential_sft,cpift]'
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TASKS = {"first_letter": "messages", "count_letters": "prompt_completion", "capitals": "alpaca"}


def convert(row: dict, fmt: str) -> dict:
    user, reply = row["messages"][-2]["content"], row["messages"][-1]["content"]
    if fmt == "messages":
        return {"messages": row["messages"]}
    if fmt == "prompt_completion":
        return {"prompt": user, "completion": reply}
    return {"instruction": user, "input": "", "output": reply}


def write_recipe(out: Path) -> Path:
    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    world = ToyWorld(ToyWorldConfig(seed=0))
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = []
    for task, fmt in TASKS.items():
        for split, rows in (("train", world.task_train(task)), ("test", world.task_test(task))):
            (data / f"{task}_{split}.jsonl").write_text("".join(json.dumps(convert(r, fmt)) + "\n" for r in rows))
        lines.append(f"  - {{name: {task}, source: data/{task}_train.jsonl, test_source: data/{task}_test.jsonl, "
                     f"format: {fmt}}}")
    recipe = out / "recipe.yaml"
    recipe.write_text(f"""description: three dissimilar user tasks in three formats (tiny world v2 model and safety data)
model: {{source: toyworld}}
toyworld: {{seed: 0, version: 2}}
safety:
  data: toyworld
  core: {{probe_examples: 512, top_p: 0.01}}
  mix_fraction: 0.05
tasks:
{chr(10).join(lines)}
cpift: {{probe_examples: 512, tau: 0.1}}
training: {{learning_rate: 5.0e-5, per_device_train_batch_size: 16, max_length: 128, lr_scheduler_type: constant, warmup_steps: 0}}
budget: {{examples_per_method: 2400, include_probes: true}}
baselines: [multitask_sft, sequential_sft, cpift]
eval: {{suites: [tasks, refusal, overrefusal], task_examples: 100, max_new_tokens: 32}}
""")
    return recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/three_group")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as for `safe-cpift run` (e.g. cpift.replay_fraction=balanced)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    recipe = write_recipe(out)
    subprocess.run(["safe-cpift", "run", str(recipe), *args.set, "--seeds", *args.seeds, "--output-dir",
                    str(out / "run")], check=True)
    agg = json.loads((out / "run" / "results.json").read_text())
    methods = agg["methods"]
    print("task (per seed) | " + " | ".join(m for m in methods if m != "aligned"))
    for task in TASKS:
        print(task + " | " + " | ".join(" / ".join(f"{v:.2f}" for v in methods[m]["task_scores"][task]["values"])
                                        for m in methods if m != "aligned"))
    for m in methods:
        print(f"{m}: task mean {methods[m]['task_mean']['mean']:.3f} ± {methods[m]['task_mean']['sd']:.3f}, refusal "
              f"{methods[m]['refusal_rate']['mean']:.3f}, over-refusal {methods[m]['over_refusal_rate']['mean']:.3f}")
    groups = agg["clusters"]
    print("groups per seed:", groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
