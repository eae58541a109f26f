"""Launched by tests/test_fsdp.py with torchrun (2 CPU processes, gloo), or alone as the 1-process reference.

Modes:
- `plugin`: SFTTrainer with accelerate's FSDP plugin, version 2 (`fsdp=True, fsdp_config={"version": 2}`),
  CoreFreezeCallback and a SafetyGuardCallback that rolls back at the probe of step 4.
- `single`: the same run in one process (no FSDP; per-device batch = the 2 ranks' global batch).
- `fully_shard`: plain `fully_shard` per decoder layer and root, `FrozenEntries` in a hand-written loop.
- `resume`: plugin run saved at step 2 (sharded checkpoint), then a fresh Trainer resumes it to step 4.
- `plugin` and `single` then train once more per gradient protection (`none`, `direction`, `projection`,
  `token_kl` with the reference sharded, and under FSDP `token_kl_whole_ref` with it whole per rank), each
  with CoreFreezeCallback, 4 steps, into `protect-{name}.safetensors`.
- `bench STEPS [HIDDEN]`: only those protection runs, STEPS steps each (hidden size HIDDEN), with per-step wall
  times and the reference model's bytes on each rank (for docs/distributed.md).
- `ddp [STEPS]`: the same protection runs without the FSDP plugin: under torchrun the Trainer wraps the model in DDP.

Writes into OUT_DIR: `final.safetensors` (gathered weights, from rank 0), `step2.safetensors` (gathered at
step 2, where the guard's last good probe is) and `rank{R}.json` (what each rank saw).

accelerate turns FSDP off on CPU (its FSDP path is for accelerators): on a machine without GPUs
`cpu_fsdp` puts the FSDP2 plugin back into the accelerator state before training, so the Trainer
prepares the model with accelerate's own `fully_shard` code, as it does on GPUs.

Usage: torchrun --nproc_per_node 2 tests/scripts/fsdp_train.py OUT_DIR MODE [STEPS [HIDDEN]]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tiny import (  # noqa: E402
    exit_after_results,
    random_region,
    safety_chats,
    sft_dataset,
    snapshot,
    tiny_llama,
    word_tokenizer,
)
from transformers import TrainerCallback  # noqa: E402

from safe_cpift import CoreFreezeCallback, SafetyGuardCallback  # noqa: E402
from safe_cpift.protect.guard import RefusalProbe  # noqa: E402
from safe_cpift.sharding import local_tensor  # noqa: E402

MODEL = {"seed": 0}  # the tiny Llama's arguments (`bench` may set a wider `hidden`)
FSDP_CONFIG = {"version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
               "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "state_dict_type": "SHARDED_STATE_DICT"}


def rank_world() -> tuple[int, int]:
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def gathered(model) -> dict[str, torch.Tensor]:
    """Every parameter whole (a collective under FSDP2: all ranks call it)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        out[name] = (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu().contiguous().clone()
    return out


class GatherAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step, self.weights = step, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.weights = gathered(model)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, the protections, the step, the freeze)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def cpu_fsdp(trainer) -> None:
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if trainer.args.fsdp and state.distributed_type != DistributedType.FSDP:
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        state.distributed_type = DistributedType.FSDP
        trainer.is_fsdp_enabled = True


def make_trainer(out_dir: Path, mode: str, callbacks: list, max_steps: int, save: bool = False):
    from trl import SFTConfig, SFTTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))  # the process group starts with the Trainer's arguments
    sharded = mode != "single"
    args = SFTConfig(
        output_dir=str(out_dir / "trainer"), max_steps=max_steps, per_device_train_batch_size=4 // world,
        learning_rate=1e-2, weight_decay=0.1, max_grad_norm=1.0, max_length=32, use_cpu=True, bf16=False,
        activation_checkpointing=False, report_to="none", logging_steps=1, seed=0, disable_tqdm=True,
        train_sampling_strategy="sequential",  # the same examples in each global batch, whatever the world size
        save_strategy="steps" if save else "no", save_steps=2,
        **({"fsdp": True, "fsdp_config": dict(FSDP_CONFIG)} if sharded else {}),
    )
    trainer = SFTTrainer(model=tiny_llama(**MODEL), args=args, train_dataset=sft_dataset(),
                         processing_class=word_tokenizer(), callbacks=callbacks)
    if sharded:
        cpu_fsdp(trainer)
    return trainer


def run_trainer(out_dir: Path, mode: str) -> dict:
    region = random_region(tiny_llama(seed=0))
    probes = []
    # refuses (counts as safe) for the probes at steps 0 and 2, answers at step 4: the guard rolls back
    probe = RefusalProbe(["what is the a ?", "what is 1 ?"], judge=lambda text: probes.append(text) or len(probes) <= 4,
                         max_new_tokens=3)
    guard = SafetyGuardCallback(probe, every_n_steps=2, min_refusal=0.5, action="rollback")
    at2 = GatherAt(2)
    freeze = CoreFreezeCallback(region)
    trainer = make_trainer(out_dir, mode, [freeze, guard, at2], max_steps=6)
    trainer.train()
    final = gathered(trainer.model)
    info = {"global_step": trainer.state.global_step, "frozen": freeze.last_check, "guard_history": guard.history,
            "rolled_back": guard.rolled_back, "last_good_step": guard.last_good_step, "judge_calls": len(probes),
            "param_type": type(next(trainer.model.parameters())).__name__}
    return {"final": final, "step2": at2.weights, "info": info}


PROTECTIONS = ("none", "direction", "projection", "token_kl", "token_kl_whole_ref")
HAND_LOOP_PROTECTIONS = ("direction", "projection", "token_kl")


def make_protection(name: str):
    """The gradient protection `name`, built the same on every rank (seeded, no global RNG)."""
    from safe_cpift.protect.direction import AlignmentDirectionPenalty, SafetyGradientProjection
    from safe_cpift.protect.token_kl import ResponseTokenKL

    if name == "none":
        return None
    if name == "direction":
        aligned = snapshot(tiny_llama(**MODEL))
        gen = torch.Generator().manual_seed(3)
        base = {n: t + 0.05 * torch.randn(t.shape, generator=gen) for n, t in aligned.items()}
        return AlignmentDirectionPenalty(aligned, base, strength=50.0)
    if name == "projection":
        return SafetyGradientProjection(word_tokenizer(), safety_chats(), every=2, batch_size=8)
    return ResponseTokenKL(tiny_llama(**MODEL), word_tokenizer(), safety_chats(), strength=5.0, first_k=3, batch_size=8,
                           shard_reference=name == "token_kl")  # `token_kl_whole_ref`: the reference whole per rank


def run_protections(out_dir: Path, mode: str, steps: int) -> dict:
    """One training per gradient protection, each with the frozen core; gathered weights saved by rank 0."""
    region = random_region(tiny_llama(**MODEL))
    rank, _ = rank_world()
    infos = {}
    for name in PROTECTIONS:
        if mode == "single" and name == "token_kl_whole_ref":
            continue  # in one process the reference is whole either way: the same run as `token_kl`
        protection, freeze, timer = make_protection(name), CoreFreezeCallback(region), StepTimer()
        trainer = make_trainer(out_dir / name, mode, [freeze, timer] + ([protection] if protection else []),
                               max_steps=steps)
        trainer.train()
        weights = gathered(trainer.model)
        if rank == 0:
            save_file(weights, str(out_dir / f"protect-{name}.safetensors"))
        infos[name] = {"frozen": freeze.last_check, "global_step": trainer.state.global_step,
                       "step_seconds": timer.times, "median_step_seconds": statistics.median(timer.times[1:] or timer.times),
                       "param_type": type(next(trainer.model.parameters())).__name__}
        if protection is not None:
            infos[name].update({"calls": protection.calls, "seconds": protection.seconds, "last": protection.last,
                                "conflicts": getattr(protection, "conflicts", None)})
        if hasattr(protection, "reference"):
            ref = list(protection.reference.parameters())
            infos[name]["reference_param_type"] = type(ref[0]).__name__
            infos[name]["reference_bytes"] = sum(local_tensor(p).numel() * p.element_size() for p in ref)
        infos[name]["model_bytes"] = sum(local_tensor(p).numel() * p.element_size() for p in trainer.model.parameters())
        del trainer
    return infos


def run_resume(out_dir: Path) -> dict:
    region = random_region(tiny_llama(seed=0))
    first = make_trainer(out_dir, "resume", [CoreFreezeCallback(region)], max_steps=2, save=True)
    first.train()
    checkpoints = sorted((out_dir / "trainer").glob("checkpoint-*"))
    freeze = CoreFreezeCallback(region)
    second = make_trainer(out_dir, "resume", [freeze], max_steps=4, save=False)
    second.train(resume_from_checkpoint=str(checkpoints[-1]))
    info = {"global_step": second.state.global_step, "frozen": freeze.last_check,
            "checkpoints": [c.name for c in checkpoints],
            "checkpoint_files": sorted(p.name for p in checkpoints[-1].rglob("*") if p.is_file())}
    return {"final": gathered(second.model), "step2": None, "info": info}


def hand_loop_batches(step: int, ranks: list[int]) -> list[str]:
    """The rows rank `r` trains on at `step` in the hand-written loops (2 per rank); all ranks' rows = the global batch."""
    return [f"user : what is {(step + r) % 10} ? . assistant : the {step} yes ." for r in ranks for _ in range(2)]


def hand_loop(model, frozen, ranks: list[int], steps: int = 3, protection=None) -> list[dict[str, float]]:
    """AdamW steps on `ranks`' rows: backward, the protection's `adjust`, the step, then `frozen.restore()`.

    The loop a user writes around plain `fully_shard`; with `ranks` = every rank's id in one process it
    is the one-process run on the same global batches (FSDP2 averages the ranks' gradients). Returns what
    the protection's `adjust` returned at each step it ran (every `protection.every` steps, as its callback).
    """
    logged = []
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    tok = word_tokenizer()
    for step in range(steps):
        batch = tok(hand_loop_batches(step, ranks), return_tensors="pt", padding=True)
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        if protection is not None and step % protection.every == 0:
            logged.append(protection.adjust(model, step))
        opt.step()
        opt.zero_grad()
        frozen.restore()
    return logged


def shard(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def run_fully_shard(out_dir: Path) -> dict:
    """Plain `fully_shard` with `FrozenEntries` in a hand-written loop, alone and with each gradient protection."""
    from safe_cpift import FrozenEntries

    rank, _ = rank_world()
    model = shard(tiny_llama(seed=0))
    frozen = FrozenEntries(model, random_region(tiny_llama(seed=0)))
    hand_loop(model, frozen, [rank])
    info = {"frozen": {"frozen_entries": frozen.num_entries, "frozen_intact": frozen.verify(all_ranks=True),
                       "local_entries": frozen.local_entries},
            "param_type": type(next(model.parameters())).__name__, "protections": {}}
    first = gathered(model)
    for name in HAND_LOOP_PROTECTIONS:
        model = shard(tiny_llama(**MODEL))
        frozen, protection = FrozenEntries(model, random_region(tiny_llama(**MODEL))), make_protection(name)
        logged = hand_loop(model, frozen, [rank], protection=protection)
        weights = gathered(model)
        if rank == 0:
            save_file(weights, str(out_dir / f"fully_shard-{name}.safetensors"))
        info["protections"][name] = {"frozen_intact": frozen.verify(all_ranks=True), "logged": logged,
                                     "param_type": type(next(model.parameters())).__name__}
    return {"final": first, "step2": None, "info": info}


def hand_loop_one_process(name: str, world: int = 2) -> dict[str, torch.Tensor]:
    """`run_fully_shard`'s run with protection `name`, in one process on every rank's rows at once."""
    from safe_cpift import FrozenEntries

    model = tiny_llama(**MODEL)
    hand_loop(model, FrozenEntries(model, random_region(tiny_llama(**MODEL))), list(range(world)),
              protection=make_protection(name))
    return gathered(model)


def main(out_dir: Path, mode: str, steps: int = 4, hidden: int | None = None) -> None:
    torch.set_num_threads(1)
    out_dir.mkdir(parents=True, exist_ok=True)
    if mode in ("plugin", "single"):
        result = run_trainer(out_dir, mode)
        result["info"]["protections"] = run_protections(out_dir, mode, steps)
    elif mode in ("bench", "ddp"):
        if hidden is not None:
            MODEL["hidden"] = hidden
        sharded = mode == "bench" and int(os.environ.get("WORLD_SIZE", "1")) > 1  # `ddp`: no FSDP plugin
        result = {"final": None, "step2": None,
                  "info": {"protections": run_protections(out_dir, "plugin" if sharded else "single", steps)}}
    elif mode == "resume":
        result = run_resume(out_dir)
    elif mode == "fully_shard":
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        result = run_fully_shard(out_dir)
    else:
        raise SystemExit(f"unknown mode {mode}")
    rank, world = rank_world()
    info = {"rank": rank, "world_size": world, **result["info"]}
    if rank == 0 and result["final"] is not None:
        save_file(result["final"], str(out_dir / "final.safetensors"))
        if result["step2"] is not None:
            save_file(result["step2"], str(out_dir / "step2.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(info, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], *(int(a) for a in sys.argv[3:]))
    exit_after_results()
