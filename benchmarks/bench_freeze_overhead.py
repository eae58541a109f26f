"""Step-time overhead of CoreFreezeCallback inside TRL's SFTTrainer (prints ratios; asserts nothing).

    OMP_NUM_THREADS=1 python benchmarks/bench_freeze_overhead.py [--rounds 5] [--steps 30]

Runs the same SFTTrainer job without the callback, with it, and with it plus `zero_frozen_grads`
(gradient hooks), interleaved round by round. Each run's step time is the median (and the minimum)
of its per-step wall times (steps after the first 3, timed from `on_step_begin` to `on_step_end`),
so trainer setup is not counted. The printed ratio per variant is the median over rounds of
(variant / baseline). On a machine shared with other jobs the Trainer ratios swing by tens of
percent, so the isolated cost of `restore()` (and of the gradient hooks) is printed as well.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    PrinterCallback,
    TrainerCallback,
)


def tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "user assistant : . ? what is and sorry cannot help yes no the a".split() + [str(i) for i in range(10)]
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    out.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
                         "{% if add_generation_prompt %}assistant : {% endif %}")
    return out


def model(layers: int, hidden: int, vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, pad_token_id=0,
                      eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def dataset(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        a, b = torch.randint(0, 10, (2,), generator=g).tolist()
        rows.append({"messages": [{"role": "user", "content": f"what is {a} and {b} ?"},
                                  {"role": "assistant", "content": f"{a} {b} {(a + b) % 10}"}]})
    return Dataset.from_list(rows)


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def isolated_cost(region, a: argparse.Namespace, vocab: int, reps: int = 300) -> dict[str, float]:
    """Median wall time of `restore()` alone, and of a backward pass with vs without the grad hooks
    (alternating call by call so that load from other processes hits both alike)."""
    from safe_cpift.protect.freeze import FrozenEntries

    m = model(a.layers, a.hidden, vocab)
    frozen = FrozenEntries(m, region)
    t_restore = []
    for _ in range(reps):
        t = time.perf_counter()
        frozen.restore()
        t_restore.append(time.perf_counter() - t)
    ids = torch.randint(0, vocab, (16, 32), generator=torch.Generator().manual_seed(0))
    with_hooks, without = [], []
    for i in range(80):
        frozen.zero_frozen_grads(i % 2 == 1)
        loss = m(input_ids=ids, labels=ids).loss
        t = time.perf_counter()
        loss.backward()
        (with_hooks if i % 2 else without).append(time.perf_counter() - t)
        m.zero_grad(set_to_none=True)
    frozen.zero_frozen_grads(False)
    m(input_ids=ids, labels=ids).loss.backward()
    from safe_cpift.protect.freeze import _make_zero_hook

    hooks = [(p, _make_zero_hook(idx)) for _, p, idx, _ in frozen._entries]
    t_zero = []
    for _ in range(reps):
        t = time.perf_counter()
        for p, h in hooks:
            h(p)
        t_zero.append(time.perf_counter() - t)
    return {"restore_us": 1e6 * statistics.median(t_restore), "zero_us": 1e6 * statistics.median(t_zero),
            "hooks_us": 1e6 * (statistics.median(with_hooks[2:]) - statistics.median(without[2:]))}


def run(callbacks: list, a: argparse.Namespace, tok, ds) -> tuple[float, float]:
    from trl import SFTConfig, SFTTrainer

    timer = StepTimer()
    args = SFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", max_steps=a.steps, per_device_train_batch_size=16,
                     gradient_accumulation_steps=1, learning_rate=1e-3, weight_decay=0.1, max_grad_norm=1.0,
                     logging_steps=10_000, save_strategy="no", use_cpu=True, bf16=False, activation_checkpointing=False,
                     max_length=32, seed=0, disable_tqdm=True)
    tr = SFTTrainer(model=model(a.layers, a.hidden, len(tok)), args=args, train_dataset=ds, processing_class=tok,
                    callbacks=[*callbacks, timer])
    tr.remove_callback(PrinterCallback)
    tr.train()
    return statistics.median(timer.times[3:]), min(timer.times[3:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--top-p", type=float, nargs="+", default=[0.01, 0.2])
    a = p.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.set_flush_denormal(True)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    from safe_cpift import CoreFreezeCallback, CoreRegion

    tok, ds = tokenizer(), dataset(16 * (a.steps + 1))
    base = {k: v.detach().clone() for k, v in model(a.layers, a.hidden, len(tok)).named_parameters()}
    g = torch.Generator().manual_seed(1)
    tuned = {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}
    n_params = sum(v.numel() for v in base.values())
    print(f"model: {n_params / 1e6:.2f}M params, batch 16 x 32 tokens, {a.steps} steps/run, {a.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    run([], a, tok, ds)  # warm-up
    for top_p in a.top_p:
        region = CoreRegion.from_update(base, tuned, top_p=top_p, progress=False)
        variants = {"restore": {}, "restore+grad_hooks": {"zero_frozen_grads": True}}
        ratios: dict[str, list[float]] = {k: [] for k in variants}
        min_ratios: dict[str, list[float]] = {k: [] for k in variants}
        base_times = []
        for _ in range(a.rounds):
            t0 = run([], a, tok, ds)
            base_times.append(t0)
            for name, kw in variants.items():
                t1 = run([CoreFreezeCallback(region, **kw)], a, tok, ds)
                ratios[name].append(t1[0] / t0[0])
                min_ratios[name].append(t1[1] / t0[1])
        step = statistics.median(t[0] for t in base_times)
        print(f"top_p {top_p}: {region.num_selected} frozen entries; baseline step {1000 * step:.1f} ms")
        for name in variants:
            r = ratios[name]
            print(f"  {name:18s} ratio of median step times {statistics.median(r):.3f} [{min(r):.3f}-{max(r):.3f}], "
                  f"ratio of fastest steps {statistics.median(min_ratios[name]):.3f}")
        cost = isolated_cost(region, a, len(tok))
        pct = {k: 100e-6 * v / step for k, v in cost.items()}
        print(f"  isolated: restore() {cost['restore_us']:.0f} us/step ({pct['restore_us']:.2f}% of the step); "
              f"zeroing frozen grads {cost['zero_us']:.0f} us/step ({pct['zero_us']:.2f}%); backward with vs without "
              f"hooks (alternating) {cost['hooks_us']:+.0f} us ({pct['hooks_us']:+.2f}%)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
