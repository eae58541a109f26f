"""Region extraction throughput on a synthetic sharded checkpoint pair vs a raw read of the same files.

    OMP_NUM_THREADS=1 nice python benchmarks/bench_region_extract.py [--gb 1.0] [--top-p 0.01] [--threads N] [--keep DIR]
    OMP_NUM_THREADS=1 python benchmarks/bench_region_extract.py --quick     # 2 x 0.5 GB, one repeat: under 3 min
    OMP_NUM_THREADS=1 python benchmarks/bench_region_extract.py --quick --dtype bfloat16

Writes a base and a tuned checkpoint (Llama-like tensor shapes, float32 or `--dtype bfloat16`, `--gb`
GB each, 256 MB shards) to a temporary directory, then times, each in a fresh subprocess so peak RSS is its own:

- `raw`: read every byte of both checkpoints' .safetensors files (16 MB `readinto`, no parsing);
- `touch`: open both with `safe_cpift.io.open_checkpoint` and sum every tensor (mmap + one pass);
- `extract`: `CoreRegion.from_update(base_dir, tuned_dir, top_p)` (global exact threshold), timed
  after the per-process setup (importing `safe_cpift.regions` and loading the numba kernel of
  `regions.fused`, 0.4–0.6 s with the `fast` extra), which is printed as `setup_s`.
  `SAFE_CPIFT_FUSED=0` measures the torch path.

Each is measured warm (files in the page cache) and cold (pages of these files dropped with
`posix_fadvise(DONTNEED)`, which touches no other process's cache). Prints throughput, the ratio
raw_time / extract_time (target >= 0.8) and peak RSS (VmHWM, which counts mapped file pages) plus
the peak anonymous RSS sampled every 20 ms, and ends with one line a script can read:
`warm_ratio=<raw/extract, warm> cold_ratio=<raw/extract, cold> peak_anon_mb=<extract's> ...`.
`--threads N` gives `CoreRegion.from_update(num_threads=N)` (worker threads scoring chunks).
Deletes the files unless `--keep` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_util import AnonPeak, drop_cache, files, llama_shapes, read_files, status_kb

os.environ.setdefault("OMP_NUM_THREADS", "1")


def shapes(gb: float, hidden: int = 1024, inter: int = 2816, vocab: int = 32000) -> dict[str, tuple[int, ...]]:
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, -(-int(gb * 1e9 / 4 - fixed) // per_layer))
    return llama_shapes(layers, hidden, inter, vocab)


def write_pair(root: Path, gb: float, dtype: str = "float32") -> tuple[Path, Path, int]:
    import torch

    from safe_cpift.io import ShardedWriter

    g = torch.Generator().manual_seed(0)
    total = 0
    cast = getattr(torch, dtype)
    with ShardedWriter(root / "base", max_shard_bytes=256 * 2**20) as wb, \
            ShardedWriter(root / "tuned", max_shard_bytes=256 * 2**20) as wt:
        for name, shape in shapes(gb * 4 / cast.itemsize).items():  # gb of files in either dtype
            b = torch.randn(shape, generator=g) * 0.02
            t = b + torch.randn(shape, generator=g) * 1e-3
            wb.add(name, b.to(cast))
            wt.add(name, t.to(cast))
            total += b.numel()
    return root / "base", root / "tuned", total


def measure(kind: str, base: str, tuned: str, top_p: float, threads: int = 1) -> dict:
    """Run one measurement in this process (called in a child)."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    extra = {}
    if kind == "extract":  # per-process setup, outside the timed region: imports, numba kernel load
        t = time.perf_counter()
        from safe_cpift.regions import CoreRegion, fused

        extra["fused"] = fused.warm_up()
        extra["setup_seconds"] = time.perf_counter() - t
    anon = AnonPeak().__enter__()
    cpu = time.process_time()
    t = time.perf_counter()
    if kind == "raw":
        extra["bytes"] = read_files(files(Path(base), Path(tuned)))
    elif kind == "touch":
        from safe_cpift.io import open_checkpoint

        s = 0.0
        for d in (base, tuned):
            reader = open_checkpoint(d)
            for _, x in reader.iter_tensors():
                s += float(x.sum())
        extra["checksum"] = s
    else:
        region = CoreRegion.from_update(base, tuned, top_p=top_p, progress=False, num_threads=threads)
        extra["entries"] = region.num_selected
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - cpu
    anon.__exit__()
    return {"kind": kind, "seconds": elapsed, "cpu_seconds": cpu, "peak_rss_mb": status_kb("VmHWM") / 1024,
            "peak_anon_mb": anon.peak_kb / 1024, **extra}


def child(kind: str, base: Path, tuned: Path, top_p: float, threads: int = 1) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(base), str(tuned), str(top_p), str(threads)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, base, tuned, top_p, threads = sys.argv[2:7]
        print(json.dumps(measure(kind, base, tuned, float(top_p), int(threads))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=1.0, help="size of EACH checkpoint in GB (float32)")
    p.add_argument("--top-p", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="num_threads of the extraction (default: 2, or 1 on a 1-core machine)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the checkpoints (bfloat16: twice the entries for the same bytes)")
    p.add_argument("--quick", action="store_true", help="2 x 0.5 GB, one repeat (under 3 minutes)")
    p.add_argument("--keep", default=None, help="write the checkpoints here and keep them")
    a = p.parse_args()
    if a.quick:
        a.gb, a.repeats = 0.5, 1
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-region-"))
    try:
        t = time.perf_counter()
        if (root / "base").is_dir() and (root / "tuned").is_dir():
            base, tuned = root / "base", root / "tuned"
            total = None
        else:
            base, tuned, total = write_pair(root, a.gb, a.dtype)
        os.sync()  # the checkpoints just written: no write-back during the timed runs
        size = sum(f.stat().st_size for f in files(base, tuned))
        print(f"checkpoints: 2 x {size / 2 / 1e9:.2f} GB {a.dtype} in {len(files(base))} + {len(files(tuned))} shards "
              f"({total or '?'} params each), written in {time.perf_counter() - t:.1f} s; "
              f"load average {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}")
        results: dict[tuple[str, str], list[dict]] = {}
        for cache in ("warm", "cold"):
            for _ in range(a.repeats):
                for kind in ("raw", "touch", "extract"):
                    if cache == "cold":
                        drop_cache(files(base, tuned))
                    else:
                        child("raw", base, tuned, a.top_p)  # bring the files into the page cache
                    results.setdefault((cache, kind), []).append(child(kind, base, tuned, a.top_p, a.threads))
        ratios = {}
        for cache in ("warm", "cold"):
            sec = {k: statistics.median(r["seconds"] for r in results[(cache, k)]) for k in ("raw", "touch", "extract")}
            for k in ("raw", "touch", "extract"):
                r = results[(cache, k)][-1]
                print(f"{cache:4s} {k:7s}: {sec[k]:6.2f} s  {size / sec[k] / 1e9:5.2f} GB/s  cpu {r['cpu_seconds']:5.2f} s  "
                      f"peak RSS {r['peak_rss_mb']:7.0f} MB  peak anon {r['peak_anon_mb']:6.0f} MB"
                      + (f"  entries {r['entries']}" if "entries" in r else ""))
            ratios[cache] = sec["raw"] / sec["extract"]
            print(f"{cache:4s} ratio raw/extract = {ratios[cache]:.2f}, "
                  f"touch/extract = {sec['touch'] / sec['extract']:.2f}  (median of {a.repeats})")
        load = os.getloadavg()[0]
        print(f"load average at end {load:.2f}")
        anon = max(r["peak_anon_mb"] for c in ("warm", "cold") for r in results[(c, "extract")])
        ex = results[("warm", "extract")][-1]
        print(f"extract setup (imports + numba kernel load, once per process, not timed above): "
              f"{ex['setup_seconds']:.2f} s; fused kernel {'on' if ex['fused'] else 'off (torch path)'}")
        print(f"warm_ratio={ratios['warm']:.3f} cold_ratio={ratios['cold']:.3f} peak_anon_mb={anon:.0f} "
              f"threads={a.threads} gb={size / 2 / 1e9:.2f} dtype={a.dtype} load={load:.2f} fused={int(ex['fused'])} "
              f"setup_s={ex['setup_seconds']:.2f}")
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
