"""Region extraction and fuse wall time of this checkout vs another git revision, same files, interleaved.

    OMP_NUM_THREADS=1 python benchmarks/ab_speed.py --ref main [--rounds 3]

Exports `src/` of `--ref` (`git archive`) to a temporary directory, writes a 2 x 0.52 GB checkpoint
pair (extraction, top_p 0.01, warm page cache) and the `bench_fuse.py --quick` checkpoints (fuse of
two task models with cores and a protected core), then runs each measurement in a fresh subprocess
for the reference and for this checkout in turn, `--rounds` times, and prints the medians of wall
and process CPU time (all threads) and the speed-ups. Interleaving keeps the comparison fair on a shared machine. Deletes everything afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRACT = """
import sys, time, torch
torch.set_num_threads(1)
from _bench_util import files, read_files
from safe_cpift.regions import CoreRegion
r = sys.argv[1]
read_files(files(r + '/base', r + '/tuned'))
t, c = time.perf_counter(), time.process_time()
CoreRegion.from_update(r + '/base', r + '/tuned', top_p=0.01, progress=False)
print(time.perf_counter() - t, time.process_time() - c)
"""
FUSE = """
import shutil, sys, time, torch
from pathlib import Path
torch.set_num_threads(1)
import bench_fuse as bf
from safe_cpift.merge import fuse
r = Path(sys.argv[1])
args = bf.parse_args(['--quick'])
regions, safety = bf.regions(args)
bf.read_files(bf.files(r / 'base', r / 'a', r / 'b'))
t, c = time.perf_counter(), time.process_time()
fuse(r / 'base', {'a': r / 'a', 'b': r / 'b'}, regions, protect=safety, t=0.3, out_dir=r / 'out',
     max_shard_bytes=args.shard_mb * 2**20)
print(time.perf_counter() - t, time.process_time() - c)
shutil.rmtree(r / 'out')
"""


def run(code: str, src: Path, data: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(data)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    wall, cpu = out.stdout.split()[-2:]
    return float(wall), float(cpu)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="main", help="git revision to compare with")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    sys.path.insert(0, str(HERE))
    import bench_fuse
    import bench_region_extract

    tmp = Path(tempfile.mkdtemp(prefix="ab_speed_"))
    try:
        archive = subprocess.run(["git", "archive", a.ref, "src"], cwd=HERE.parent, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        srcs = {a.ref: tmp / "src", "this checkout": HERE.parent / "src"}
        bench_region_extract.write_pair(tmp / "pair", 0.5)
        bench_fuse.write_checkpoints(tmp / "fuse", bench_fuse.parse_args(["--quick"]))
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(a.rounds):
            for what, code, data in (("extract", EXTRACT, tmp / "pair"), ("fuse", FUSE, tmp / "fuse")):
                for label, src in srcs.items():
                    times.setdefault((what, label), []).append(run(code, src, data))
        for what in ("extract", "fuse"):
            for i, kind in enumerate(("wall", "cpu")):
                ref, ours = (statistics.median(x[i] for x in times[(what, label)]) for label in srcs)
                print(f"{what:8s} {kind:4s} {a.ref}: {ref:.2f} s  this checkout: {ours:.2f} s  "
                      f"speed-up {ref / ours:.2f}x (median of {a.rounds}, interleaved)")
        print(f"load average {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
