"""Do LoRA probes (`cpift.probe_lora`) find the same task cores as full probes? Jaccard per task.

Runs the pipeline's own probe stage (`safe_cpift.pipeline.probes.run_probe`) twice per task of the
recipe (default: `recipes/toy.yaml`, the tiny world v2): as a full fine-tune, and with
`cpift.probe_lora` (rank `--rank`, alpha `--alpha`, every decoder linear layer, learning rate 10× the
recipe's unless `--lora-lr`), merged. Both use the same rows in the same order (the stage seed). The
cores are extracted as the `task_cores` stage does (top `cpift.top_p` of |θ_probe − θ0|, the recipe's
scope). The table gives their Jaccard; the Jaccard of the full core with a random region of the same
size (chance); the share of the full core inside the matrices LoRA adapts (decoder linear weights);
the Jaccard of the two cores extracted among those matrices only; and each probe's final training
loss and training seconds.

    OMP_NUM_THREADS=1 python benchmarks/lora_cores.py [--recipe recipes/toy.yaml] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def linear_names(model_dir: Path) -> list[str]:
    """The matrices peft's `all-linear` adapts: the decoder layers' projections."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return [n for n in f.keys() if ".layers." in n and n.endswith("proj.weight")]


def main() -> None:
    import dataclasses

    import torch
    from safetensors.torch import load_file

    from safe_cpift import CoreRegion
    from safe_cpift.pipeline import probes
    from safe_cpift.pipeline.common import MODEL_DIR, RunContext
    from safe_cpift.pipeline.from_recipe import spec_from_recipe
    from safe_cpift.recipe import find_recipe, load_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="toy")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--lora-lr", type=float, help="default: 10x the recipe's learning rate (the pipeline's default)")
    ap.add_argument("--tasks", nargs="*")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(find_recipe(args.recipe), overrides=args.overrides)
    full_spec = spec_from_recipe(recipe)
    lora_spec = dataclasses.replace(full_spec, probe_lora={"rank": args.rank, "alpha": args.alpha,
                                                           "learning_rate": args.lora_lr})
    theta0 = Path(full_spec.aligned_model)
    linear = linear_names(theta0)
    aligned = load_file(str(theta0 / "model.safetensors"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"full": RunContext(full_spec, Path(tmp) / "full"), "lora": RunContext(lora_spec, Path(tmp) / "lora")}
        for task in args.tasks or full_spec.task_names:
            cores, lin_cores, info = {}, {}, {}
            for kind, ctx in runs.items():
                out = Path(ctx.root) / task
                out.mkdir(parents=True)
                info[kind] = probes.run_probe(ctx, out, task)
                tuned = out / MODEL_DIR
                cores[kind] = CoreRegion.from_update(theta0, tuned, top_p=ctx.spec.top_p, scope=ctx.spec.scope,
                                                     scorer="update", progress=False)
                moved = load_file(str(tuned / "model.safetensors"))
                lin_cores[kind] = CoreRegion.from_update({n: aligned[n] for n in linear}, {n: moved[n] for n in linear},
                                                         top_p=ctx.spec.top_p, progress=False)
            full, lora = cores["full"], cores["lora"]
            gen = torch.Generator().manual_seed(0)
            chance = CoreRegion.from_scores({n: torch.rand(t.shape, generator=gen) for n, t in aligned.items()
                                             if t.is_floating_point()}, top_p=full_spec.top_p)
            rows[task] = {"jaccard": full.jaccard(lora), "chance": full.jaccard(chance),
                          "full_core_in_linear": sum(full.counts().get(n, 0) for n in linear) / max(full.num_selected, 1),
                          "jaccard_linear_only": lin_cores["full"].jaccard(lin_cores["lora"]),
                          "loss": {k: v["train"]["final_loss"] for k, v in info.items()},
                          "train_seconds": {k: v["train"]["train_seconds"] for k, v in info.items()},
                          "lora": info["lora"]["lora"]}
            r = rows[task]
            print(f"{task:<16} jaccard {r['jaccard']:.3f}  chance {r['chance']:.3f}  full core in linear layers "
                  f"{r['full_core_in_linear']:.3f}  jaccard among linear layers {r['jaccard_linear_only']:.3f}  "
                  f"loss full {r['loss']['full']:.3f} lora {r['loss']['lora']:.3f}  "
                  f"seconds full {r['train_seconds']['full']:.0f} lora {r['train_seconds']['lora']:.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "tasks": rows}, indent=2))


if __name__ == "__main__":
    main()
