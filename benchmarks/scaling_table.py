"""Disk, memory and compute per pipeline stage for the 0.5B / 7B recipes and a 70B model, from their sizes.

Parameter counts come from each model's architecture (transformers config, built on the meta device:
nothing is downloaded); example counts from the shipped recipes (3 tasks). Prints the markdown tables
of docs/scaling.md.

Usage: python benchmarks/scaling_table.py
"""

from __future__ import annotations

import torch

GB = 1e9
MODELS = {  # the published architectures (config values), tied embeddings where the model ties them
    "Qwen2.5-0.5B": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, intermediate_size=4864, num_attention_heads=14,
                                   num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)),
    "Qwen2.5-7B": ("qwen2", dict(hidden_size=3584, num_hidden_layers=28, intermediate_size=18944, num_attention_heads=28,
                                 num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)),
    "Llama-3.1-70B": ("llama", dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672,
                                    num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                                    tie_word_embeddings=False)),
}
# the shipped recipes (recipes/qwen2.5-*.yaml, llama-3.1-8b): 3 tasks, these budgets, max_length 1024
TASKS, SAFETY_PROBE, TASK_PROBE, BUDGET, MAX_LEN, TOP_P = 3, 1024, 2048, 12000, 1024, 0.01


def count(arch: str, kw: dict) -> tuple[int, int]:
    """(unique parameters, entries of the largest tensor)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(arch, **kw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = list(model.parameters())
    return sum(p.numel() for p in params), max(p.numel() for p in params)


def main() -> None:
    baseline = BUDGET + SAFETY_PROBE + TASKS * TASK_PROBE  # each SFT baseline matches safe_cpift's total
    stages = [  # (stage, examples trained, full models written, regions written)
        ("safety_core (probe SFT, region)", SAFETY_PROBE, 0, 1),
        (f"probe_<task> x{TASKS}", TASKS * TASK_PROBE, TASKS, 0),
        ("task_cores + clusters", 0, 0, TASKS),
        ("fusion (safe_cpift, cpift)", 0, 2, 0),
        ("sft_group_<i> (safe_cpift, <= 3 groups)", BUDGET, 3, 0),
        ("cpift_sft_group_<i> (<= 3 groups)", BUDGET, 3, 0),
        ("multitask_sft", baseline, 1, 0),
        (f"sequential_sft x{TASKS}", baseline, TASKS, 0),
        ("safety_mix_sft", baseline, 1, 0),
        ("final_model (copy)", 0, 1, 0),
    ]
    for name, (arch, kw) in MODELS.items():
        n, largest = count(arch, kw)
        model_gb = 2 * n / GB  # bf16 checkpoints, as the recipes load them
        region_gb = TOP_P * n * (4 + 2) / GB  # int32 index + the protected bf16 value
        print(f"\n### {name}: {n / 1e9:.2f}B parameters, {model_gb:.1f} GB per bf16 checkpoint\n")
        print("| stage | examples | tokens (<=) | training PFLOP (6·N·tokens) | disk written (GB) |")
        print("|---|---:|---:|---:|---:|")
        total_tokens = total_disk = 0.0
        for stage, examples, models, regions in stages:
            tokens = examples * MAX_LEN
            disk = models * model_gb + regions * region_gb
            total_tokens += tokens
            total_disk += disk
            print(f"| {stage} | {examples} | {tokens / 1e6:.1f}M | {6 * n * tokens / 1e15:,.0f} | {disk:,.1f} |")
        print(f"| **all** | | {total_tokens / 1e6:.1f}M | {6 * n * total_tokens / 1e15:,.0f} | {total_disk:,.1f} |")
        print(f"\nTraining state per copy (no activations): fp32 master + bf16 autocast {16 * n / GB:,.0f} GB "
              f"(4 weight + 4 grad + 8 AdamW); bf16 weights with fp32 AdamW moments {12 * n / GB:,.0f} GB. "
              f"Largest tensor {largest / 1e6:.0f}M entries: fusion of 3 tasks streams base + 3 tasks + output "
              f"of it in float32, {5 * 4 * largest / GB:.1f} GB. Guard rollback snapshot {2 * n / GB:.1f} GB (bf16) "
              f"of CPU RAM or disk per process (1/N per rank under FSDP2). Safety-core region + values "
              f"{region_gb:.2f} GB.")
        flops = 6 * n * total_tokens
        print(f"GPU-hours at an assumed 40% of an H100's 989 bf16 TFLOP/s (not measured): {flops / (0.4 * 989e12) / 3600:,.1f}")


if __name__ == "__main__":
    main()
