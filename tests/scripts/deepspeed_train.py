"""Launched by tests/test_deepspeed.py with torchrun (2 CPU processes, gloo): a DeepSpeed engine trains a tiny
Llama with `FrozenEntries` restored after every step (what `CoreFreezeCallback.on_optimizer_step` does).

Stage 1/2: writes `rank{R}.json` with the checks (model entries and the fp32 master partition both frozen, and
how many parameters still hold a `.grad` after `engine.backward`) and rank 0 writes `final.safetensors`. Stage 3: records the refusal message.

Usage: torchrun --nproc_per_node 2 tests/scripts/deepspeed_train.py OUT_DIR STAGE
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny import exit_after_results, random_region, tiny_llama, word_tokenizer  # noqa: E402


def main(out_dir: Path, stage: int) -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    from safe_cpift import FrozenEntries
    from safe_cpift.distributed import check_supported

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank = torch.distributed.get_rank()
    model = tiny_llama(seed=0)
    region = random_region(tiny_llama(seed=0))
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": stage},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.1, "torch_adam": True}}}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    info: dict = {"rank": rank, "stage": stage}
    try:
        info["mode"] = check_supported(engine.module)
    except ValueError as err:
        info["refused"] = str(err)
        (out_dir / f"rank{rank}.json").write_text(json.dumps(info))
        return
    frozen = FrozenEntries(engine.module, region)
    tok = word_tokenizer()
    grads_after_backward = []  # why the gradient protections refuse ZeRO-1/2: no `param.grad` left to adjust
    for step in range(3):
        text = [f"user : what is {(step + rank) % 10} ? . assistant : the {step} yes ."] * 2
        batch = tok(text, return_tensors="pt", padding=True)
        loss = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"]).loss
        engine.backward(loss)
        grads_after_backward.append(sum(p.grad is not None for p in engine.module.parameters()))
        engine.step()
        frozen.restore()
    params = dict(engine.module.named_parameters())
    master_ok = True
    for name in region.names():  # the optimizer's fp32 master copy (a collective: all ranks call it)
        master = safe_get_full_fp32_param(params[name]).reshape(-1)
        idx = region.indices(name)
        master_ok &= bool(torch.equal(master[idx], frozen._entries[[e[0] for e in frozen._entries].index(name)][3]))
    info.update({"grads_after_backward": grads_after_backward, "frozen_intact": frozen.verify(), "master_intact": master_ok, "frozen_entries": frozen.num_entries,
                 "has_hp_mapping": any(getattr(p, "_hp_mapping", None) is not None for p in params.values())})
    if rank == 0:
        save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(out_dir / "final.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    main(out, int(sys.argv[2]))
    exit_after_results()
