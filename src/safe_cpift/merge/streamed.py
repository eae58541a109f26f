"""Two-task fusion of float32 or bfloat16 models streamed into the output files a chunk at a time.

`fuse`'s per-tensor pass computes a whole output tensor into a buffer, then a background thread
writes it: the output crosses memory twice (computed, then read back by the write), the buffers are
as large as the largest tensor, and the write of the last tensors overlaps nothing. Here each thread
fills one small buffer (`CHUNK` entries, which stays in cache) with the compiled pass
(`merge.kernels.fuse2`) and writes it at its planned place itself (`PlannedShardWriter.add_part`).

A tensor's SLERP weights need its dot products (`gram2`, one pass over both task tensors) before its
first output entry. The work is therefore one queue of jobs that the threads take in order: the
dot-product chunks of the first tensor, then the output chunks of tensor i interleaved with the
dot-product chunks of tensor i + 1, so the threads stay busy across tensors. A thread that takes an
output chunk of a tensor whose last dot-product chunk is still running waits for it.

bfloat16 models (given as int16 bit patterns) are computed in float32 as the per-tensor pass computes
them (each entry widened exactly as it is read) and each output chunk is rounded to bfloat16 as torch
rounds (`kernels.round_bf16`). The output is bit for bit that of the per-tensor pass: the same
per-block partial sums added in block order (`kernels.sum_partials`), the same weights
(`slerp.weights_from_dots`) and the same arithmetic, whatever the chunk size and number of threads.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from safe_cpift.merge import kernels
from safe_cpift.merge.slerp import DOT_THRESHOLD, weights_from_dots

__all__ = ["CHUNK", "PairTensor", "stream_pairs"]

CHUNK = 1 << 18  # output entries per job: 1 MiB of float32, written while still in cache
_DOTS, _OUT = 0, 1


@dataclass
class PairTensor:
    """One tensor of a two-task fusion, as flat arrays (views of the inputs, not copies): all float32, or
    all bfloat16 given as int16 bit patterns (the output is then bfloat16 too).

    Args:
        name (`str`): the tensor's name in the writer's plan.
        t (`float`): the SLERP factor, strictly between 0 and 1 (0 and 1 are exact copies, not SLERPs).
        g0, g1 (`np.ndarray`): the two task tensors in the given order (SLERP's first and second).
        base, t0, t1 (`np.ndarray`): the base tensor and the task tensors in sorted task-name order.
        ia, ib (`np.ndarray`): sorted core indices of `t0` and `t1` (int32 or int64, the same for all three).
        src, ip (`np.ndarray`): the protected values and their sorted indices (may be empty).
    """

    name: str
    t: float
    g0: np.ndarray
    g1: np.ndarray
    base: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    ia: np.ndarray
    ib: np.ndarray
    src: np.ndarray
    ip: np.ndarray


@dataclass
class _Progress:
    """What is known of one tensor while its jobs run."""

    partials: np.ndarray
    dots_left: int
    outs_left: int
    bounds: np.ndarray  # per output chunk edge: positions in ia, ib, ip (3 x edges)
    ready: threading.Event = field(default_factory=threading.Event)
    weights: tuple[np.float32, np.float32] = (np.float32(0), np.float32(0))


def _jobs(sizes: list[int], chunk: int, dots_blocks: int) -> list[tuple[int, int, int, int]]:
    """(kind, tensor, lo, hi) in the order the threads take them: dot-product jobs over blocks lo..hi-1,
    output jobs over entries lo..hi-1."""
    dots, outs = [], []
    for i, n in enumerate(sizes):
        blocks = -(-n // kernels.BLOCK)
        dots.append([(_DOTS, i, b, min(b + dots_blocks, blocks)) for b in range(0, blocks, dots_blocks)])
        outs.append([(_OUT, i, s, min(s + chunk, n)) for s in range(0, n, chunk)])
    order = list(dots[0]) if sizes else []
    for i in range(len(sizes)):
        following = dots[i + 1] if i + 1 < len(sizes) else []
        for pair in itertools.zip_longest(outs[i], following):
            order.extend(job for job in pair if job is not None)
    return order


def stream_pairs(kern: kernels.Kernels, tensors: list[PairTensor], writer, *, num_threads: int,
                 dot_threshold: float = DOT_THRESHOLD,
                 on_tensor_done: Callable[[str], None] | None = None) -> np.ndarray:
    """Fuse `tensors` and write each through `writer.add_part(name, first, entries)`.

    Args:
        kern (`kernels.Kernels`): the loaded compiled kernels.
        tensors (`list[PairTensor]`): the tensors, in the order to write them (the file order is best).
        writer: a `PlannedShardWriter` (or anything with a thread-safe `add_part`).
        num_threads (`int`): threads to run on, the calling thread included.
        dot_threshold (`float`): as in `slerp`.
        on_tensor_done (*optional*): called with a tensor's name once all of it is written.

    Returns:
        `np.ndarray`: the counts of `kernels.fuse_pair` summed over all tensors (won by t0, won by t1,
        contested, protected entries in a core).

    An error in any thread stops the others; the first one is raised here.
    """
    chunk = max(1, int(CHUNK))
    dots_blocks = max(1, chunk // kernels.BLOCK)  # dot-product jobs cover whole `gram2` blocks
    sub = np.int64(kernels.FUSE_BLOCK)
    jobs = _jobs([x.g0.shape[0] for x in tensors], chunk, dots_blocks)
    left = Counter((kind, i) for kind, i, _, _ in jobs)  # jobs per (kind, tensor)
    state = []
    for i, x in enumerate(tensors):
        n = x.g0.shape[0]
        edges = np.append(np.arange(0, n, chunk), n).astype(x.ia.dtype)  # the indices' dtype: no converted copy
        state.append(_Progress(partials=np.zeros((-(-n // kernels.BLOCK), 3)), dots_left=left[_DOTS, i],
                               outs_left=left[_OUT, i],
                               bounds=np.stack([np.searchsorted(v, edges) for v in (x.ia, x.ib, x.ip)])))
    position = itertools.count()  # next() on it is atomic: each job goes to one thread
    lock, stop, errors = threading.Lock(), threading.Event(), []

    def run_job(kind: int, i: int, lo: int, hi: int, buf: np.ndarray, bits: np.ndarray, counts: np.ndarray) -> None:
        x, st = tensors[i], state[i]
        if kind == _DOTS:
            kern.gram2(x.g0, x.g1, st.partials, lo, hi)
            with lock:
                st.dots_left -= 1
                last = st.dots_left == 0
            if last:
                w0, w1 = weights_from_dots(x.t, *kernels.sum_partials(st.partials), dot_threshold)
                st.weights = (np.float32(w0), np.float32(w1))
                st.ready.set()
            return
        st.ready.wait()
        if stop.is_set():
            return
        c = lo // chunk
        (a0, a1), (b0, b1), (p0, p1) = st.bounds[:, c:c + 2].tolist()
        kern.fuse2(buf, np.int64(lo), x.g0, x.g1, *st.weights, x.base, x.t0, x.t1, x.ia[a0:a1], x.ib[b0:b1],
                   x.src, x.ip[p0:p1], np.int64(lo), np.int64(hi), sub, counts)
        if x.g0.dtype == np.int16:  # bfloat16 in, bfloat16 out: rounded as torch rounds
            kern.round_bf16(buf[:hi - lo].view(np.uint32), bits[:hi - lo])
            writer.add_part(x.name, lo, bits[:hi - lo])
        else:
            writer.add_part(x.name, lo, buf[:hi - lo])
        with lock:
            st.outs_left -= 1
            finished = st.outs_left == 0
        if finished and on_tensor_done is not None:
            on_tensor_done(x.name)

    def work(counts: np.ndarray) -> None:
        buf = np.empty(chunk, dtype=np.float32)
        bits = np.empty(chunk, dtype=np.uint16)  # bfloat16 outputs, rounded from `buf`
        try:
            while not stop.is_set():
                j = next(position)
                if j >= len(jobs):
                    return
                run_job(*jobs[j], buf, bits, counts)
        except BaseException as err:  # noqa: BLE001 -- handed to the calling thread, which re-raises it
            errors.append(err)
            stop.set()
            for st in state:  # wake threads waiting for dot products that will not come
                st.ready.set()

    counts = np.zeros((max(1, int(num_threads)), 4), dtype=np.int64)
    helpers = [threading.Thread(target=work, args=(counts[k],), name=f"safe-cpift-fuse-{k}", daemon=True)
               for k in range(1, counts.shape[0])]
    for thread in helpers:
        thread.start()
    work(counts[0])
    for thread in helpers:
        thread.join()
    if errors:
        raise errors[0]
    return counts.sum(axis=0)
