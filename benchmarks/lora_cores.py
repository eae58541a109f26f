"""Do LoRA probe runs find the same task cores as full fine-tunes? Jaccard per task on the tiny world.

For each task of the built-in tiny world, the aligned model is fine-tuned on the task's first
`--examples` rows twice: fully, and with LoRA adapters (rank `--rank` on every linear layer of the
decoder, merged afterwards with `merge_and_unload()`). The core of each run is the top `--top-p` of
|θ_tuned − θ_aligned| (global scope, as the pipeline's task cores); the table gives their Jaccard
index, and the Jaccard with a random region of the same size as the chance level. The LoRA core can
only contain entries of the adapted matrices (embeddings, norms and the output layer stay frozen), so
the table also gives the share of the full core inside the decoder's linear weights, and the Jaccard
of the two cores extracted among those weights only.

    OMP_NUM_THREADS=1 python benchmarks/lora_cores.py --examples 256 --top-p 0.01 --rank 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tuned(world, task: str, examples: int, lr: float, lora_rank: int | None):
    from transformers import AutoModelForCausalLM

    from safe_cpift.training import train_sft

    model = AutoModelForCausalLM.from_pretrained(world.aligned_model_path(), dtype="float32", use_safetensors=True)
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    data = world.task_train(task).select(range(examples))
    with tempfile.TemporaryDirectory() as tmp:
        train_sft(model, world.tokenizer(), data, output_dir=tmp, num_train_epochs=1, learning_rate=lr,
                  batch_size=16, seed=0)
    return model.merge_and_unload() if lora_rank else model


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from safe_cpift import CoreRegion
    from safe_cpift.toyworld.world import ToyWorld

    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--top-p", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="full fine-tune rate (LoRA uses 10x)")
    ap.add_argument("--tasks", nargs="*")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = ToyWorld()
    aligned = AutoModelForCausalLM.from_pretrained(world.aligned_model_path(), dtype="float32", use_safetensors=True)
    rows = {}
    for task in args.tasks or world.task_names:
        full_model = _tuned(world, task, args.examples, args.lr, None)
        lora_model = _tuned(world, task, args.examples, 10 * args.lr, args.rank)
        full = CoreRegion.from_update(aligned, full_model, top_p=args.top_p, progress=False)
        lora = CoreRegion.from_update(aligned, lora_model, top_p=args.top_p, progress=False)
        # the same, among the decoder's linear weights only (the matrices LoRA adapts)
        linear = [n for n, _ in aligned.named_parameters() if ".layers." in n and n.endswith("proj.weight")]
        full_lin, lora_lin = (CoreRegion.from_update({n: dict(aligned.named_parameters())[n].detach() for n in linear},
                                                     {n: dict(m.named_parameters())[n].detach() for n in linear},
                                                     top_p=args.top_p, progress=False) for m in (full_model, lora_model))
        in_linear = sum(full.counts().get(n, 0) for n in linear) / max(full.num_selected, 1)
        gen = torch.Generator().manual_seed(0)
        chance = CoreRegion.from_scores({n: torch.rand(p.shape, generator=gen) for n, p in aligned.named_parameters()},
                                        top_p=args.top_p)
        rows[task] = {"jaccard": full.jaccard(lora), "overlap": full.overlap(lora), "chance": full.jaccard(chance),
                      "full_core_in_linear": in_linear, "jaccard_linear_only": full_lin.jaccard(lora_lin)}
        print(f"{task:<16} jaccard {rows[task]['jaccard']:.3f}  overlap {rows[task]['overlap']:.3f}  "
              f"chance {rows[task]['chance']:.3f}  full core in linear layers {in_linear:.3f}  "
              f"jaccard among linear layers {rows[task]['jaccard_linear_only']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "tasks": rows}, f, indent=2)


if __name__ == "__main__":
    main()
