"""How long writing a model-sized file into the page cache takes, right away and after the machine idled.

    python benchmarks/bench_page_cache_write.py [--mb 512] [--repeats 3] [--idle 6]

Fusion ends in writing the fused model (`bench_fuse.py`'s fuse and raw_io modes each write ~468 MB).
On the machine these benchmarks were run on, such a write sometimes took several times longer than
usual, in fuse, raw_io and mergekit alike. This benchmark isolates it: it writes `--mb` MB (64 MiB
writes, no fsync) to a fresh file `--repeats` times back to back (deleting the previous file, so its
pages are freed just before), then `--repeats` times each after deleting the file and sleeping `--idle`
seconds, and prints
the seconds per write of each, ending with one line a script can read:
`back_to_back_s=<median> after_idle_s=<median> ratio=<after_idle / back_to_back>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def write_once(path: Path, chunk: bytes, mb: int) -> float:
    if path.exists():
        path.unlink()
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(0, mb << 20, len(chunk)):
            f.write(chunk)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--idle", type=float, default=6.0, help="seconds of sleep before each 'after idle' write")
    a = p.parse_args()
    chunk = os.urandom(1 << 20) * 64
    with tempfile.TemporaryDirectory(prefix="bench-page-cache-write-") as tmp:
        path = Path(tmp) / "out.bin"
        write_once(path, chunk, a.mb)  # the first write of a run: not counted
        os.sync()
        back = [write_once(path, chunk, a.mb) for _ in range(a.repeats)]
        idle = []
        for _ in range(a.repeats):
            path.unlink()  # its pages are freed first, then the machine idles
            os.sync()
            time.sleep(a.idle)
            idle.append(write_once(path, chunk, a.mb))
    print(f"back to back: {', '.join(f'{s:.3f}' for s in back)} s per {a.mb} MB write")
    print(f"after {a.idle:g} s idle: {', '.join(f'{s:.3f}' for s in idle)} s per {a.mb} MB write")
    b, i = statistics.median(back), statistics.median(idle)
    print(f"back_to_back_s={b:.3f} after_idle_s={i:.3f} ratio={i / b:.2f} mb={a.mb} load={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
