"""Seesaw check on the tiny world: single-task vs multi-task SFT of the aligned model.

For every task a fresh copy of the aligned model is fine-tuned on that task alone for `--steps`
steps; then one copy is fine-tuned on all tasks mixed for `len(tasks) x --steps` steps (the same
examples per task) and one for `--steps` steps (the same total examples as one single-task run).
Held-out exact-match accuracy per task is printed side by side with the deltas (multi - single).
A seesaw shows as negative deltas at equal examples per task, mostly on the conflicting pairs
(sort up/down, copy/flip, code one/two). Single-task runs are also scored at half their steps so
you can see whether they converged.

    OMP_NUM_THREADS=1 python benchmarks/seesaw.py --steps 150 --lr 1e-3 --json /tmp/seesaw.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from erosion import parse_sets, write_json  # noqa: E402


def _fresh(world):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(world.aligned_model_path(), dtype="float32", use_safetensors=True)


def _train(world, dataset, steps: int, lr: float, batch_size: int, tasks: list[str], half: bool = False) -> dict:
    """Train a fresh aligned copy on `dataset`; task scores at the end (and at steps // 2 when `half`)."""
    import torch
    from transformers import TrainerCallback

    from safe_cpift.training import train_sft

    tok = world.tokenizer()
    model = _fresh(world)
    mid: dict = {}

    class Half(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if half and state.global_step == steps // 2:
                rng = torch.get_rng_state()
                mid.update(world.evaluate(model, tok, tasks=tasks)["task_scores"])
                torch.set_rng_state(rng)
                model.train()

    with tempfile.TemporaryDirectory() as tmp:
        stats = train_sft(model, tok, dataset, output_dir=tmp, max_steps=steps, learning_rate=lr,
                          batch_size=batch_size, callbacks=[Half()], seed=0, num_threads=1)
    scores = world.evaluate(model, tok, tasks=tasks)["task_scores"]
    return {"scores": scores, "half": mid, "train_seconds": stats.train_seconds, "examples": stats.examples_seen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--steps", type=int, default=150, help="steps of each single-task run")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    from datasets import concatenate_datasets

    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig

    world = ToyWorld(ToyWorldConfig(**parse_sets(args.sets), num_threads=1))
    names = list(world.task_names)
    mix = concatenate_datasets([world.task_train(n) for n in names]).shuffle(seed=0)
    start = time.perf_counter()
    single = {}
    for n in names:
        single[n] = _train(world, world.task_train(n), args.steps, args.lr, args.batch_size, [n], half=True)
        print(f"single {n}: {single[n]['scores'][n]:.3f} (half: {single[n]['half'][n]:.3f})", flush=True)
    multi_eq = _train(world, mix, args.steps * len(names), args.lr, args.batch_size, names)
    multi_total = _train(world, mix, args.steps, args.lr, args.batch_size, names)
    per_task = args.steps * args.batch_size
    print(f"\nSFT lr={args.lr:g}, batch {args.batch_size}; single-task: {per_task} examples of its task; multi "
          f"(equal per task): {per_task} examples per task; multi (equal total): {per_task} in total\n")
    print("| task | single (half) | single | multi eq/task | delta | multi eq total | delta |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for n in names:
        s, h = single[n]["scores"][n], single[n]["half"][n]
        m, t = multi_eq["scores"][n], multi_total["scores"][n]
        rows[n] = {"single_half": h, "single": s, "multi_equal_per_task": m, "delta_equal_per_task": m - s,
                   "multi_equal_total": t, "delta_equal_total": t - s}
        print(f"| {n} | {h:.3f} | {s:.3f} | {m:.3f} | {m - s:+.3f} | {t:.3f} | {t - s:+.3f} |")
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in next(iter(rows.values()))}
    print(f"| mean | {mean['single_half']:.3f} | {mean['single']:.3f} | {mean['multi_equal_per_task']:.3f} | "
          f"{mean['delta_equal_per_task']:+.3f} | {mean['multi_equal_total']:.3f} | {mean['delta_equal_total']:+.3f} |")
    print(f"\n(wall {time.perf_counter() - start:.0f}s on a shared machine)")
    if args.json:
        out = {"config": dataclasses.asdict(world.config), "lr": args.lr, "steps": args.steps,
               "batch_size": args.batch_size, "tasks": rows, "mean": mean,
               "runs": {"single": single, "multi_equal_per_task": multi_eq, "multi_equal_total": multi_total}}
        write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
