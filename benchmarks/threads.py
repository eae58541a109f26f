"""Steps/s of the tiny world's model training at 1 vs 2 torch threads (justifies the 1-thread default).

    python benchmarks/threads.py [--steps 60] [--batch-size 16] [--seq-len 128]

Run it alone on the machine; other processes change the answer a lot (that is the point of
measuring: with 2 threads on 2 shared cores step times became erratic).
"""

from __future__ import annotations

import argparse
import time

import torch

from safe_cpift.toyworld.modeling import ModelShape, make_model


def steps_per_second(threads: int, steps: int, batch_size: int, seq_len: int, vocab: int = 1024) -> float:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    model = make_model(ModelShape(), vocab, 0, 1, seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(2, vocab, (batch_size, seq_len), generator=gen)
    for _ in range(5):  # warm-up
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    rates = {}
    for threads in (1, 2, 1, 2):  # interleaved to average out drift in background load
        rates.setdefault(threads, []).append(steps_per_second(threads, args.steps, args.batch_size, args.seq_len))
    one, two = (sum(rates[t]) / len(rates[t]) for t in (1, 2))
    print(f"1 thread: {one:.2f} steps/s   2 threads: {two:.2f} steps/s   ratio 2/1: {two / one:.2f}")
    print("raw:", {t: [round(r, 2) for r in v] for t, v in rates.items()})


if __name__ == "__main__":
    main()
