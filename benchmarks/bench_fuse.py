"""Two-model fuse side by side: safe_cpift.merge.fuse vs mergekit's SLERP (or a plain loop) vs raw I/O.

    OMP_NUM_THREADS=1 python benchmarks/bench_fuse.py --against mergekit            # ~460 MB per model (fp32)
    OMP_NUM_THREADS=1 python benchmarks/bench_fuse.py --against mergekit --quick    # ~230 MB, under 3 min
    OMP_NUM_THREADS=1 python benchmarks/bench_fuse.py --against loop                # no mergekit needed
    OMP_NUM_THREADS=1 python benchmarks/bench_fuse.py --dtype bfloat16              # bfloat16 checkpoints

mergekit comes with the optional extra: `pip install -c constraints-cpu.txt -e ".[bench]"`.

Writes synthetic sharded Llama-shaped float32 (or `--dtype bfloat16`) checkpoints (base, task a, task b; 1% random cores per
task plus a 1% safety core) under `--root` (default: a temporary directory, deleted afterwards),
brings them into the page cache and flushes dirty pages (`os.sync()`, so the write-back of earlier
outputs does not run during a timed mode), then times each mode in its own subprocess:

* `fuse`: `safe_cpift.merge.fuse(base, {a, b}, regions, protect=safety, t=T, out_dir=...,
  num_threads=--threads)` — streams tensor by tensor, SLERPs the non-core entries, transplants the
  cores, keeps the safety core, writes sharded safetensors atomically (on a background thread).
  With the `fast` extra its float32 passes are compiled (`merge.kernels`); loading them (numba
  import, once per process) is excluded and printed apart, like mergekit's import.
* `mergekit`: mergekit's own `run_merge` with `merge_method: slerp`, `base_model: a`, the same `t`
  (mergekit's `t` weighs the non-base model, as fuse's weighs the second task), `dtype` the checkpoints',
  `num_threads=--threads` and `async_write` (on unless `--no-mergekit-async-write`), in-process (its
  import time is excluded and printed apart).
* `loop` (`--against loop`): load both models whole, SLERP each whole tensor in float32, `save_file`.
* `raw_io`: read every byte of both task models and write one model's bytes — the I/O floor.

Prints wall time, throughput (GB/s of task-model input: 2 x one model's bytes over the time), peak
RSS (VmHWM, counts memory-mapped pages) and peak anonymous RSS, then checks that the two merges
agree on every entry outside the cores (max |fuse - other|) and ends with one line a script can read:
`ratio_vs_mergekit=<fuse throughput / mergekit's> ratio_vs_raw_io=<fuse throughput / raw I/O's>
max_abs_diff=<...> ...` (goals: >= 2 and >= 1/1.3 = 0.77). Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _bench_util import AnonPeak, files, llama_shapes, read_files, status_kb

os.environ.setdefault("OMP_NUM_THREADS", "1")
MODES = {"mergekit": ("raw_io", "mergekit", "fuse"), "loop": ("raw_io", "loop", "fuse")}
# merges of weights ~0.02-0.1; mergekit takes norms/dots in float32, fuse in float64; in bfloat16 a
# rounding step is 2^-11..2^-9 at these magnitudes, so the two may round the other way once
ATOL = {"float32": 1e-5, "bfloat16": 2.0**-9}


def model_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    return llama_shapes(args.layers, args.hidden, args.inter, args.vocab)


def write_checkpoints(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    from safe_cpift.io import ShardedWriter, atomic_write_json

    g = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    dirs = {k: root / k for k in ("base", "a", "b")}
    writers = {k: ShardedWriter(d, max_shard_bytes=args.shard_mb * 2**20) for k, d in dirs.items()}
    for name, shape in model_shapes(args).items():
        base = torch.randn(shape, generator=g) * 0.02
        writers["base"].add(name, base.to(dtype))
        writers["a"].add(name, (base + 0.002 * torch.randn(shape, generator=g)).to(dtype))
        writers["b"].add(name, (base + 0.002 * torch.randn(shape, generator=g)).to(dtype))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
              "intermediate_size": args.inter, "num_hidden_layers": args.layers, "num_attention_heads": 8,
              "num_key_value_heads": 8, "vocab_size": args.vocab, "tie_word_embeddings": False,
              "torch_dtype": args.dtype}
    for k, w in writers.items():
        w.close()
        atomic_write_json(dirs[k] / "config.json", config)
    return dirs


def random_region(shapes: dict[str, tuple[int, ...]], fraction: float, seed: int):
    from safe_cpift.regions import CoreRegion

    g = torch.Generator().manual_seed(seed)
    indices = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        k = max(1, int(numel * fraction))
        indices[name] = torch.unique(torch.randint(numel, (k,), generator=g))  # ~k distinct entries
    fp = {n: (list(s), "float32") for n, s in shapes.items()}
    return CoreRegion(indices, fp, top_p=fraction, scope="tensor", scorer="update")


def regions(args: argparse.Namespace) -> tuple[dict, object]:
    shapes = model_shapes(args)
    return {"a": random_region(shapes, 0.01, 1), "b": random_region(shapes, 0.01, 2)}, random_region(shapes, 0.01, 3)


def whole_tensor_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, thr: float = 0.9995, eps: float = 1e-8):
    """The textbook per-tensor slerp on whole float32 tensors (normalised copies, torch.sum dot)."""
    a, b = v0.float(), v1.float()
    n0, n1 = a / a.norm().clamp_min(eps), b / b.norm().clamp_min(eps)
    dot = float(torch.sum(n0 * n1))
    if abs(dot) > thr:
        return ((1 - t) * a + t * b).to(v0.dtype)
    theta = math.acos(dot)
    s0, s1 = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return (s0 * a + s1 * b).to(v0.dtype)


def run_loop(root: Path, out: Path, args: argparse.Namespace) -> None:
    from safetensors.torch import load_file, save_file

    models = []
    for k in ("a", "b"):
        sd = {}
        for f in files(root / k):
            sd.update(load_file(str(f)))
        models.append(sd)
    merged = {n: whole_tensor_slerp(args.t, models[0][n], models[1][n]) for n in models[0]}
    out.mkdir()
    shard, size, i = {}, 0, 0
    for n, tensor in merged.items():
        shard[n] = tensor
        size += tensor.numel() * tensor.element_size()
        if size > args.shard_mb * 2**20:
            save_file(shard, str(out / f"model-{i:05d}.safetensors"))
            shard, size, i = {}, 0, i + 1
    if shard:
        save_file(shard, str(out / f"model-{i:05d}.safetensors"))


def mergekit_config(root: Path, t: float, dtype: str) -> dict:
    return {"merge_method": "slerp", "base_model": str(root / "a"), "dtype": dtype,
            "models": [{"model": str(root / "a")}, {"model": str(root / "b")}], "parameters": {"t": t}}


def child(mode: str, root: Path, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads if mode in ("mergekit", "loop") else int(os.environ["OMP_NUM_THREADS"]))
    out = root / f"out_{mode}"
    shutil.rmtree(out, ignore_errors=True)
    import_s = 0.0
    if mode == "mergekit":
        start = time.perf_counter()
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        import_s = time.perf_counter() - start
        config = MergeConfiguration.model_validate(mergekit_config(root, args.t, args.dtype))
        options = MergeOptions(device="cpu", copy_tokenizer=False, write_model_card=False, quiet=True,
                               out_shard_size=args.shard_mb * 2**20, num_threads=args.threads,
                               async_write=args.mergekit_async_write)
    elif mode == "fuse":
        start = time.perf_counter()
        from safe_cpift.merge import fuse, kernels

        kernels.warm_up()  # numba import + kernel load, once per process (like mergekit's import, not timed)
        import_s = time.perf_counter() - start
        task_regions, safety = regions(args)
    with AnonPeak() as anon:
        start = time.perf_counter()
        if mode == "fuse":
            fuse(root / "base", {"a": root / "a", "b": root / "b"}, task_regions, protect=safety, t=args.t,
                 out_dir=out, max_shard_bytes=args.shard_mb * 2**20, num_threads=args.threads)
        elif mode == "mergekit":
            run_merge(config, str(out), options=options)
        elif mode == "loop":
            run_loop(root, out, args)
        elif mode == "raw_io":
            out.mkdir()
            read_files(files(root / "b"))
            read_files(files(root / "a"), copy_to=out / "model.safetensors")
        else:
            raise ValueError(mode)
        seconds = time.perf_counter() - start
    return {"mode": mode, "seconds": seconds, "import_seconds": import_s, "peak_rss_mb": status_kb("VmHWM") / 1024,
            "peak_anon_rss_mb": anon.peak_kb / 1024}


def max_abs_diff_outside_cores(root: Path, other: str, args: argparse.Namespace) -> tuple[float, int]:
    """max |fuse - other| over the entries in no core (task a, task b, safety), and how many entries."""
    from safe_cpift.io import open_checkpoint

    task_regions, safety = regions(args)
    ours, theirs = open_checkpoint(root / "out_fuse"), open_checkpoint(root / f"out_{other}")
    worst, count = 0.0, 0
    for name in model_shapes(args):
        x, y = (m.get(name).reshape(-1).to(torch.float32) for m in (ours, theirs))
        keep = torch.ones(x.numel(), dtype=torch.bool)
        for region in (*task_regions.values(), safety):
            keep[region.indices(name).to(torch.long)] = False
        if keep.any():
            worst = max(worst, float((x[keep] - y[keep]).abs().max()))
        count += int(keep.sum())
    return worst, count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--against", choices=sorted(MODES), default="mergekit",
                   help="mergekit: mergekit's SLERP (needs the `bench` extra); loop: a plain whole-tensor loop")
    p.add_argument("--quick", action="store_true", help="smaller models (2 layers, vocab 16000), best of 2: under 3 min")
    p.add_argument("--t", type=float, default=0.3, help="SLERP t (weight of task b; not 0.5, so a swapped "
                   "convention would show in max_abs_diff)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the checkpoints' dtype")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--inter", type=int, default=2816)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--shard-mb", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="threads of both merges: fuse's num_threads, mergekit's num_threads (default 2)")
    p.add_argument("--mergekit-async-write", action=argparse.BooleanOptionalAction, default=True,
                   help="mergekit's async_write (on by default: fuse writes on a background thread too)")
    p.add_argument("--root", default=None, help="where to write the checkpoints (default: a temp dir, deleted)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.vocab, args.repeats = 2, 16000, 2
    return args


def child_argv(mode: str, root: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, __file__, "--child", mode, "--root", str(root), "--vocab", str(args.vocab),
            "--hidden", str(args.hidden), "--inter", str(args.inter), "--layers", str(args.layers),
            "--shard-mb", str(args.shard_mb), "--t", str(args.t), "--threads", str(args.threads), "--dtype", args.dtype,
            "--mergekit-async-write" if args.mergekit_async_write else "--no-mergekit-async-write"]


def main() -> int:
    args = parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), args)))
        return 0
    modes = MODES[args.against]
    if args.against == "mergekit":
        probe = subprocess.run([sys.executable, "-c", "import mergekit"], capture_output=True, text=True)
        if probe.returncode:
            print("mergekit is not installed: pip install -c constraints-cpu.txt -e \".[bench]\"", file=sys.stderr)
            return 2
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="bench_fuse_"))
    status = 1
    try:
        t0 = time.perf_counter()
        write_checkpoints(root, args)
        model_bytes = sum(f.stat().st_size for f in files(root / "a"))
        print(f"wrote 3 synthetic {args.dtype} checkpoints of {model_bytes / 1e6:.0f} MB each "
              f"({len(files(root / 'a'))} shards) in {time.perf_counter() - t0:.1f}s; t={args.t}; "
              f"load average {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode in modes:
                read_files(files(root / "base", root / "a", root / "b"))  # warm page cache for every mode
                os.sync()  # no write-back of earlier outputs during the timed run
                res = subprocess.run(child_argv(mode, root, args), capture_output=True, text=True, env=env)
                if res.returncode:
                    print(res.stderr[-3000:], file=sys.stderr)
                    raise RuntimeError(f"mode {mode} failed (exit {res.returncode})")
                results[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
        best = {m: min(runs, key=lambda r: r["seconds"]) for m, runs in results.items()}
        gbps = {m: 2 * model_bytes / 1e9 / r["seconds"] for m, r in best.items()}
        for mode, r in best.items():
            extra = f" (+{r['import_seconds']:.1f}s import/setup, not counted)" if r["import_seconds"] else ""
            print(f"{mode:>9}: {r['seconds']:6.2f}s{extra}  {gbps[mode]:.2f} GB/s of task-model input  "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB (anonymous {r['peak_anon_rss_mb']:.0f} MB)")
        other = modes[1]
        diff, entries = max_abs_diff_outside_cores(root, other, args)
        atol = ATOL[args.dtype]
        if diff > atol:
            print("the merges disagree beyond float tolerance outside the cores", file=sys.stderr)
        agree = diff <= atol
        print(f"fuse vs {other}: max |diff| {diff:.3g} over {entries} non-core entries "
              f"({'agree' if agree else 'DISAGREE'} within {atol:g})")
        ratio_other = gbps["fuse"] / gbps[other]
        ratio_raw = gbps["fuse"] / gbps["raw_io"]
        print(f"fuse throughput / {other}: {ratio_other:.2f}x (goal >= 2); fuse / raw read+write: "
              f"{ratio_raw:.2f}x (goal >= {1 / 1.3:.2f})")
        print(f"ratio_vs_{other}={ratio_other:.3f} ratio_vs_raw_io={ratio_raw:.3f} max_abs_diff={diff:.3g} "
              f"agree={int(agree)} repeats={args.repeats} load={os.getloadavg()[0]:.2f} "
              f"fuse_s={best['fuse']['seconds']:.3f} {other}_s={best[other]['seconds']:.3f} "
              f"raw_io_s={best['raw_io']['seconds']:.3f} fuse_peak_rss_mb={best['fuse']['peak_rss_mb']:.0f} "
              f"{other}_peak_rss_mb={best[other]['peak_rss_mb']:.0f} model_mb={model_bytes / 1e6:.0f}")
        status = 0 if agree else 1
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for mode in modes:
                shutil.rmtree(root / f"out_{mode}", ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
