"""Launched by tests/test_multiprocess.py with torchrun or `accelerate launch` (2 CPU processes, gloo).

Trains a tiny Llama with SFTTrainer + CoreFreezeCallback + SafetyGuardCallback, then each rank
writes `rank{R}.safetensors` (its final weights) and `rank{R}.json` (what it saw) into OUT_DIR.

Usage: torchrun --nproc_per_node 2 tests/scripts/ddp_train.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny import exit_after_results, random_region, sft_dataset, tiny_llama, word_tokenizer  # noqa: E402

from safe_cpift import CoreFreezeCallback, SafetyGuardCallback  # noqa: E402
from safe_cpift.protect.guard import RefusalProbe  # noqa: E402


def main(out_dir: Path) -> None:
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(1)
    model = tiny_llama(seed=0)
    region = random_region(model)
    judge_calls = []
    probe = RefusalProbe(["what is the a ?", "what is 1 ?"], ["what is 2 ?"],
                         judge=lambda text: judge_calls.append(text) or "sorry" in text.split(), max_new_tokens=3)
    guard = SafetyGuardCallback(probe, every_n_steps=2, min_refusal=0.0, action="warn")
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"), max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-2, weight_decay=0.1, max_grad_norm=1.0, max_length=32, use_cpu=True, bf16=False,
        activation_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1, seed=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(),
                         callbacks=[CoreFreezeCallback(region), guard])
    trainer.train()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    record = next(h for h in trainer.state.log_history if "frozen_intact" in h)
    info = {
        "rank": rank, "world_size": world,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        "global_step": trainer.state.global_step, "frozen_intact": record["frozen_intact"],
        "frozen_entries": record["frozen_entries"], "guard_history": guard.history,
        "judge_calls": len(judge_calls),
        "safety_logged_steps": [h["step"] for h in trainer.state.log_history if "safety/refusal_rate" in h],
    }
    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    save_file(state, str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    exit_after_results()
