"""Two-model fuse throughput: safe_cpift.merge.fuse (streaming) vs a whole-tensor SLERP merge loop.

    OMP_NUM_THREADS=1 python benchmarks/bench_fuse.py                 # ~460 MB per model (fp32)
    OMP_NUM_THREADS=1 python benchmarks/bench_fuse.py --layers 1 --vocab 4000 --hidden 256   # smoke run

Writes synthetic sharded Llama-shaped checkpoints (base, task a, task b; 1% random cores per task
plus a 1% safety core) into a temporary directory that is deleted afterwards, then times, each in
its own subprocess:

* `fuse`: `safe_cpift.merge.fuse(base_dir, {a, b}, regions, protect=safety, out_dir=...)` — streams
  tensor by tensor, SLERPs the non-core entries, transplants cores, keeps the safety core, writes
  sharded safetensors atomically.
* `reference`: the plain loop mergekit's SLERP boils down to — load both models whole
  (`safetensors.torch.load_file` of every shard), `slerp` each whole tensor in float32 the mergekit
  way (normalised copies, `torch.sum` dot), `save_file` the result in shards. No cores, no protect.
  (mergekit itself is used only if it is importable in this interpreter; it is NOT installed into
  the project venv because it pins other versions.)

Prints wall time, throughput (input GB/s over both task models), peak RSS (VmHWM, which counts
memory-mapped file pages) and the sampled peak of anonymous RSS (what the process itself allocated),
and the ratio reference/fuse. Timings are noisy on a shared machine.
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
import threading
import time
from pathlib import Path

import torch


def layer_shapes(hidden: int, inter: int) -> dict[str, tuple[int, ...]]:
    return {
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (hidden, hidden), "self_attn.k_proj.weight": (hidden, hidden),
        "self_attn.v_proj.weight": (hidden, hidden), "self_attn.o_proj.weight": (hidden, hidden),
        "mlp.gate_proj.weight": (inter, hidden), "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
    }


def model_shapes(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (args.vocab, args.hidden)}
    for i in range(args.layers):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in layer_shapes(args.hidden, args.inter).items()})
    shapes["model.norm.weight"] = (args.hidden,)
    shapes["lm_head.weight"] = (args.vocab, args.hidden)
    return shapes


def write_checkpoints(root: Path, args: argparse.Namespace) -> dict[str, Path]:
    from safe_cpift.io import ShardedWriter, atomic_write_json

    shapes = model_shapes(args)
    g = torch.Generator().manual_seed(0)
    dirs = {k: root / k for k in ("base", "a", "b")}
    writers = {k: ShardedWriter(d, max_shard_bytes=args.shard_mb * 2**20) for k, d in dirs.items()}
    for name, shape in shapes.items():
        base = torch.randn(shape, generator=g) * 0.02
        writers["base"].add(name, base)
        writers["a"].add(name, base + 0.002 * torch.randn(shape, generator=g))
        writers["b"].add(name, base + 0.002 * torch.randn(shape, generator=g))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
              "intermediate_size": args.inter, "num_hidden_layers": args.layers, "num_attention_heads": 8,
              "num_key_value_heads": 8, "vocab_size": args.vocab, "tie_word_embeddings": False}
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
        # ~k distinct random entries without a numel-sized permutation
        indices[name] = torch.unique(torch.randint(numel, (k,), generator=g))
    fp = {n: (list(s), "float32") for n, s in shapes.items()}
    return CoreRegion(indices, fp, top_p=fraction, scope="tensor", scorer="update")


class AnonPeak:
    """Sample RssAnon from /proc/self/status (VmHWM also counts memory-mapped file pages)."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _field(name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, self._field("RssAnon"))
            time.sleep(0.02)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, self._field("RssAnon"))


def mergekit_style_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, thr: float = 0.9995, eps: float = 1e-8):
    """mergekit's per-tensor slerp, whole tensors in float32 (normalised copies, torch.sum dot)."""
    a, b = v0.float(), v1.float()
    n0, n1 = a / a.norm().clamp_min(eps), b / b.norm().clamp_min(eps)
    dot = float(torch.sum(n0 * n1))
    if abs(dot) > thr:
        return ((1 - t) * a + t * b).to(v0.dtype)
    theta = math.acos(dot)
    s0 = math.sin((1 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return (s0 * a + s1 * b).to(v0.dtype)


def child(mode: str, root: Path, args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    out = root / f"out_{mode}"
    with AnonPeak() as anon:
        start = time.perf_counter()
        if mode == "fuse":
            from safe_cpift.merge import fuse

            shapes = model_shapes(args)
            regions = {"a": random_region(shapes, 0.01, 1), "b": random_region(shapes, 0.01, 2)}
            safety = random_region(shapes, 0.01, 3)
            t_regions = time.perf_counter() - start
            start = time.perf_counter()
            fuse(root / "base", {"a": root / "a", "b": root / "b"}, regions, protect=safety, out_dir=out,
                 max_shard_bytes=args.shard_mb * 2**20)
        elif mode == "reference":
            from safetensors.torch import load_file, save_file

            t_regions = 0.0
            models = []
            for k in ("a", "b"):
                sd = {}
                for f in sorted((root / k).glob("*.safetensors")):
                    sd.update(load_file(str(f)))
                models.append(sd)
            merged = {n: mergekit_style_slerp(0.5, models[0][n], models[1][n]) for n in models[0]}
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
        else:
            raise ValueError(mode)
        seconds = time.perf_counter() - start
    hwm = AnonPeak._field("VmHWM")
    shutil.rmtree(out)
    return {"mode": mode, "seconds": seconds, "setup_seconds": t_regions, "peak_rss_mb": hwm / 1024,
            "peak_anon_rss_mb": anon.peak_kb / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--inter", type=int, default=2816)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--shard-mb", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.root), args)))
        return 0
    mk = subprocess.run([sys.executable, "-c", "import mergekit"], capture_output=True)
    print(f"mergekit importable: {mk.returncode == 0} (reference = plain whole-tensor loop either way)")
    root = Path(tempfile.mkdtemp(prefix="bench_fuse_"))
    try:
        t0 = time.perf_counter()
        write_checkpoints(root, args)
        model_bytes = sum(f.stat().st_size for f in (root / "a").glob("*.safetensors"))
        print(f"wrote 3 synthetic checkpoints of {model_bytes / 1e6:.0f} MB each "
              f"({len(list((root / 'a').glob('*.safetensors')))} shards) in {time.perf_counter() - t0:.1f}s")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        results: dict[str, list[dict]] = {"fuse": [], "reference": []}
        for _ in range(args.repeats):
            for mode in ("reference", "fuse"):
                cmd = [sys.executable, __file__, "--child", mode, "--root", str(root), "--vocab", str(args.vocab),
                       "--hidden", str(args.hidden), "--inter", str(args.inter), "--layers", str(args.layers),
                       "--shard-mb", str(args.shard_mb)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
                results[mode].append(res)
        for mode, runs in results.items():
            best = min(runs, key=lambda r: r["seconds"])
            gbps = 2 * model_bytes / 1e9 / best["seconds"]
            print(f"{mode:>9}: {best['seconds']:.2f}s (best of {len(runs)}; +{best['setup_seconds']:.2f}s "
                  f"building regions)  {gbps:.2f} GB/s of task-model input  peak RSS {best['peak_rss_mb']:.0f} MB "
                  f"(anonymous {best['peak_anon_rss_mb']:.0f} MB)")
        ratio = min(r["seconds"] for r in results["reference"]) / min(r["seconds"] for r in results["fuse"])
        print(f"ratio reference/fuse time: {ratio:.2f}x (>1 means fuse is faster)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
