"""Safety erosion of a tiny world's aligned model under plain benign multi-task SFT.

Builds (or loads from the cache) the aligned model of a `ToyWorldConfig`, measures refusal of the
held-out harmful prompts and over-refusal of the held-out benign look-alikes (full sets), then runs
plain SFT (`safe_cpift.training.train_sft`) on the world's six tasks mixed, once per learning rate,
and re-measures refusal at the listed steps. Task accuracy is measured before and after.

    OMP_NUM_THREADS=1 python benchmarks/erosion.py --lrs 1e-3 3e-4 --steps 300
    SAFE_CPIFT_CACHE=/tmp/sturdy_cache OMP_NUM_THREADS=1 python benchmarks/erosion.py \\
        --set pretrain_safety_fraction=0.25 --json /tmp/erosion.json

The RNG state is saved and restored around every mid-training evaluation, so the checkpoints do not
change the training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_sets(pairs: list[str]) -> dict:
    """`["hidden_size=64", "align_lr=5e-4"]` -> ToyWorldConfig kwargs (values cast to the field type)."""
    from safe_cpift.toyworld import ToyWorldConfig

    fields = {f.name: f for f in dataclasses.fields(ToyWorldConfig)}
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"`--set {pair}`: expected FIELD=VALUE with a ToyWorldConfig field; "
                             f"fields: {', '.join(sorted(fields))}")
        default = fields[key].default
        if raw == "None":
            out[key] = None
        elif default is None:  # a version-dependent field: a number when it reads as one
            for cast in (int, float, str):
                try:
                    out[key] = cast(raw)
                    break
                except ValueError:
                    continue
        elif isinstance(default, bool):
            out[key] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[key] = int(raw)
        elif isinstance(default, float):
            out[key] = float(raw)
        else:
            out[key] = raw
    return out


def write_json(path: str, obj) -> None:
    """Write `obj` as indented JSON to `path` atomically (temp file, then rename)."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def safety_scores(world, model, tok) -> dict:
    """Full held-out refusal and over-refusal (no task prompts)."""
    import torch

    state = torch.get_rng_state()
    scores = world.evaluate(model, tok, tasks=[])
    torch.set_rng_state(state)
    return {"refusal_rate": scores["refusal_rate"], "over_refusal_rate": scores["over_refusal_rate"]}


def task_mix(world):
    """All six tasks' train sets concatenated and shuffled (seed 0)."""
    from datasets import concatenate_datasets

    return concatenate_datasets([world.task_train(n) for n in world.task_names]).shuffle(seed=0)


def erode(world, lr: float, steps: int, eval_at: list[int], batch_size: int = 16, seed: int = 0) -> dict:
    """One plain SFT run from the aligned model; refusal at `eval_at` steps, task scores at the end."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    from safe_cpift.training import train_sft

    tok = world.tokenizer()
    model = AutoModelForCausalLM.from_pretrained(world.aligned_model_path(), dtype="float32", use_safetensors=True)
    curve = {0: safety_scores(world, model, tok)} if 0 in eval_at else {}

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in eval_at and state.global_step not in curve:
                curve[state.global_step] = safety_scores(world, model, tok)
                model.train()
                print(f"  lr={lr:g} step {state.global_step}: refusal {curve[state.global_step]['refusal_rate']:.3f} "
                      f"over-refusal {curve[state.global_step]['over_refusal_rate']:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        stats = train_sft(model, tok, task_mix(world), output_dir=tmp, max_steps=steps, learning_rate=lr,
                          batch_size=batch_size, callbacks=[Probe()], seed=seed)
    final = world.evaluate(model, tok)
    curve[steps] = {"refusal_rate": final["refusal_rate"], "over_refusal_rate": final["over_refusal_rate"]}
    return {"lr": lr, "steps": steps, "batch_size": batch_size, "train_seconds": stats.train_seconds,
            "final_loss": stats.final_loss, "curve": {int(k): v for k, v in sorted(curve.items())},
            "task_scores": final["task_scores"], "task_mean": final["task_mean"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="ToyWorldConfig field (repeatable)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-at", type=int, nargs="+", default=[0, 10, 25, 50, 100, 200])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)

    from safe_cpift.toyworld import ToyWorld, ToyWorldConfig, build_info

    cfg = ToyWorldConfig(**parse_sets(args.sets), num_threads=1)
    world = ToyWorld(cfg)
    start = time.perf_counter()
    path = world.aligned_model_path()
    info = {"build_seconds_this_call": time.perf_counter() - start,
            "pretrain_seconds": build_info(world.base_model_path()).get("train_seconds"),
            "align_seconds": build_info(path).get("train_seconds"), "aligned_model": str(path)}
    print(f"world {json.dumps(parse_sets(args.sets))}: {path}\n  built: pretrain {info['pretrain_seconds']:.0f}s, "
          f"align {info['align_seconds']:.0f}s (noisy: shared machine)", flush=True)
    from transformers import AutoModelForCausalLM

    tok = world.tokenizer()
    aligned = world.evaluate(AutoModelForCausalLM.from_pretrained(path, dtype="float32", use_safetensors=True), tok)
    print(f"  aligned: refusal {aligned['refusal_rate']:.3f} over-refusal {aligned['over_refusal_rate']:.3f} "
          f"task mean {aligned['task_mean']:.3f}", flush=True)
    runs = []
    for lr in args.lrs:
        run = erode(world, lr, args.steps, sorted(set(args.eval_at) - {0}), args.batch_size)
        run["curve"] = {0: {k: aligned[k] for k in ("refusal_rate", "over_refusal_rate")}} | run["curve"]
        runs.append(run)
        curve = " ".join(f"{s}:{v['refusal_rate']:.3f}" for s, v in run["curve"].items())
        print(f"  SFT lr={lr:g} x{args.steps} steps (batch {args.batch_size}): refusal by step {curve}; final "
              f"over-refusal {run['curve'][args.steps]['over_refusal_rate']:.3f}; task mean {run['task_mean']:.3f} "
              f"{json.dumps({k: round(v, 3) for k, v in run['task_scores'].items()})}", flush=True)
    out = {"config": dataclasses.asdict(cfg), "build": info, "aligned": {k: v for k, v in aligned.items()},
           "runs": runs}
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
