"""The numba kernels (`regions.fused`) against numpy, and the fused scan (`regions.fused_scan`) vs the
torch path against an exact reference ranking. numba is in the dev extra: these tests fail without it."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama

from safe_cpift.io import ShardedWriter
from safe_cpift.regions import CoreRegion, fused, fused_scan
from safe_cpift.regions import select as region_select
from safe_cpift.regions.scoring import natural_key


@pytest.fixture(autouse=True)
def kernel_loaded():
    # the dev extra installs numba: without it this fails rather than test nothing new
    assert fused.warm_up(), "numba is missing: pip install -c constraints-cpu.txt -e '.[dev]'"


def test_kernel_is_loaded_only_where_it_pays(monkeypatch):
    monkeypatch.setattr(fused._LAZY, "value", None)
    monkeypatch.setattr(fused._LAZY, "tried", False)
    assert not fused.worth_it(10_000) and not fused._LAZY.tried  # a small pair: numba is not even imported
    monkeypatch.setattr(fused._LAZY, "min_entries", 10_000)
    assert fused.worth_it(10_000) and fused.kernels(load=False) is not None
    monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")
    assert not fused.worth_it(10**12) and fused.kernels() is None


@pytest.mark.parametrize("n", [1, 7, 63, 64, 65, 1000, 4099])
def test_cut_bf16_widens_exactly(n):
    rng = np.random.default_rng(n)
    a = torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(torch.bfloat16)
    b = torch.from_numpy(rng.standard_normal(n).astype(np.float32)).to(torch.bfloat16)
    if n > 8:
        b[3], a[4], b[5] = float("nan"), float("inf"), float("inf")
    d = (b.float() - a.float()).abs().numpy()
    idx, val = np.empty(n, np.int32), np.empty(n, np.float32)
    for value in (0.0, 0.5, float(d[0]), 3.0):
        want = np.flatnonzero(d >= np.float32(value))
        bits_a, bits_b = a.view(torch.int16).numpy(), b.view(torch.int16).numpy()
        m = fused.kernels().cut(bits_a, bits_b, np.float32(value), idx, val)  # int16 bits: bfloat16
        assert np.array_equal(idx[:m], want), value
        assert np.array_equal(val[:m], d[want])


@pytest.mark.parametrize("n", [1, 7, 63, 64, 65, 1000, 4099])
def test_cut_equals_numpy(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32)
    b = a + (rng.standard_normal(n) * 1e-2).astype(np.float32)
    b[::5] = a[::5] + np.float32(0.25)  # ties at a cut value
    if n > 8:
        b[3], a[4], b[5], a[6] = np.nan, np.inf, np.inf, -0.0  # NaN and inf - inf never pass
    d = np.abs(b - a)
    idx, val = np.empty(n, np.int32), np.empty(n, np.float32)
    for value in (0.0, 1e-3, float(d[0]), 0.25, 10.0):
        want = np.flatnonzero(d >= np.float32(value))
        m = fused.kernels().cut(a, b, np.float32(value), idx, val)
        assert np.array_equal(idx[:m], want), value
        assert np.array_equal(val[:m], d[want])


@pytest.mark.parametrize("k", [1, 2, 37, 500, 999, 1000])
def test_kth_largest_bits_is_exact_with_ties(k):
    rng = np.random.default_rng(k)
    vals = np.abs(rng.standard_normal(1000)).astype(np.float32)
    vals[::7] = np.float32(0.5)  # many ties
    vals[:3] = [0.0, np.float32(3e-39), np.inf]  # zero, a denormal and inf sort like their bit patterns
    parts = [vals[:1], vals[1:400], vals[400:400], vals[400:]]
    bits, greater = fused.kth_largest_bits([p.view(np.int32) for p in parts], k)
    kth = np.sort(vals)[::-1][k - 1]
    assert np.array([bits], dtype=np.int32).view(np.float32)[0] == kth
    assert greater == int((vals > kth).sum())


def test_pick_breaks_ties_by_order_across_calls():
    kern = fused.kernels()
    bits = np.array([5, 3, 3, 7, 3], dtype=np.int32)
    out, ties = np.empty(8, np.int64), np.array([2], dtype=np.int64)
    m = kern.pick(np.arange(5, dtype=np.int32), bits, np.int32(3), ties, np.int64(100), out, np.int64(0))
    m = kern.pick(np.arange(5, dtype=np.int32), bits, np.int32(3), ties, np.int64(200), out, np.int64(m))
    assert out[:m].tolist() == [100, 101, 102, 103, 200, 203]  # the two ties go to the earliest entries
    assert ties[0] == 0


def test_pick_never_writes_past_its_output():
    """Threads share one output array, each chunk picking into its own span: a pick must not write at or
    after the end of the array it is given, even with non-picks after its last pick."""
    kern = fused.kernels()
    bits = np.array([9, 1, 9, 2, 9, 3, 1, 1], dtype=np.int32)  # picks at 0, 2, 4, then 3 non-picks
    out = np.full(6, -1, dtype=np.int64)
    m = kern.pick(np.arange(8, dtype=np.int32), bits, np.int32(5), np.zeros(1, dtype=np.int64), np.int64(10),
                  out[:4], np.int64(1))
    assert m == 4 and out.tolist() == [-1, 10, 12, 14, -1, -1]


def reference(base, tuned, top_p):
    """Exact global top-p by (score desc, natural tensor order, flat index asc), float32 scores."""
    names = sorted(base, key=natural_key)
    scores = [(tuned[n].float() - base[n].float()).abs().reshape(-1) for n in names]
    allv = torch.cat(scores)
    k = region_select.target_count(top_p, allv.numel())
    order = torch.sort(-allv, stable=True).indices[:k]
    out, pos = {}, 0
    for n, s in zip(names, scores, strict=True):
        mine = order[(order >= pos) & (order < pos + s.numel())] - pos
        if mine.numel():
            out[n] = torch.sort(mine).values
        pos += s.numel()
    return out


def tied_pair(seed=0):
    base = {k: v.detach().clone() for k, v in make_tiny_llama(seed=seed).state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    tuned = {}
    # base all zero, so every score is exactly |delta|
    for name, v in base.items():
        delta = torch.rand(v.shape, generator=g) * 1e-2
        flat = delta.view(-1)
        flat[::13] = 0.5  # many exact ties straddle the top-p cut
        base[name] = torch.zeros_like(v)  # |delta - 0| has no rounding: ties stay ties
        tuned[name] = delta
    return base, tuned


def write(tmp_path, name, sd):
    with ShardedWriter(tmp_path / name, max_shard_bytes=1 << 14) as w:
        for n, v in sd.items():
            w.add(n, v)
    return tmp_path / name


def count_fused_scans(monkeypatch):
    """A list that gets the result of every fused scan (None when it gave up)."""
    results = []
    real = fused_scan.select_top_k
    monkeypatch.setattr(fused_scan, "select_top_k", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    return results


def as_dtype(sd, dtype):
    """float32, bfloat16, or "mixed": bfloat16 matrices with float32 vectors (norms), as real checkpoints."""
    if dtype == "mixed":
        return {n: v if v.dim() == 1 else v.to(torch.bfloat16) for n, v in sd.items()}
    return {n: v.to(dtype) for n, v in sd.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "mixed"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("top_p", [0.01, 0.08, 0.2])
def test_fused_and_torch_paths_equal_the_reference(monkeypatch, tmp_path, threads, top_p, dtype):
    monkeypatch.setattr(fused_scan, "CHUNK", 1000)  # many chunks, taken by the workers in any order
    scans = count_fused_scans(monkeypatch)
    base, tuned = (as_dtype(sd, dtype) for sd in tied_pair())
    want = reference(base, tuned, top_p)
    dirs = write(tmp_path, "base", base), write(tmp_path, "tuned", tuned)
    for src in ((base, tuned), dirs):  # in-memory views and pread from sharded checkpoints
        scans.clear()
        got = CoreRegion.from_update(*src, top_p=top_p, num_threads=threads, progress=False)
        # the ties at 0.5 are 7.7% of all entries: for top_p 0.01 they pass MAX_POOL x k, and the
        # fused scan gives up for the streaming selection (exact either way)
        assert len(scans) == 1 and (scans[0] is not None) == (top_p > 0.01), "the fused scan did not select"
        monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")
        plain = CoreRegion.from_update(*src, top_p=top_p, num_threads=threads, progress=False)
        monkeypatch.delenv("SAFE_CPIFT_FUSED")
        assert len(scans) == 1
        assert got == plain
        assert got.metadata["threshold"] == plain.metadata["threshold"]
        assert sorted(got.names()) == sorted(want), src
        for n, idx in want.items():
            assert torch.equal(torch.as_tensor(got.indices(n)).long(), idx), n


def test_fused_path_stays_exact_when_the_sampled_floor_is_wrong(monkeypatch, tmp_path):
    base, tuned = tied_pair(seed=2)
    want = reference(base, tuned, 0.05)
    dirs = write(tmp_path, "base", base), write(tmp_path, "tuned", tuned)
    monkeypatch.setattr(fused_scan, "CHUNK", 777)
    scans = count_fused_scans(monkeypatch)
    # far too low (every entry a candidate: gives up), at the ties (selects), too high (too few: gives up)
    for floor, selects in ((0.0, False), (0.5, True), (0.6, False)):
        monkeypatch.setattr(region_select, "estimate_floor", lambda *a, _f=floor, **k: _f)
        scans.clear()
        got = CoreRegion.from_update(*dirs, top_p=0.05, num_threads=2, progress=False)
        assert [s is not None for s in scans] == [selects], floor
        for n, idx in want.items():
            assert torch.equal(torch.as_tensor(got.indices(n)).long(), idx), (floor, n)


def test_a_read_error_in_a_worker_reaches_the_caller(monkeypatch):
    def broken(start, stop, buf):
        raise OSError("disk gone")

    ok = np.zeros(3000, np.float32)
    readers = [(lambda s, e, buf: ok[s:e], lambda s, e, buf: ok[s:e], "float32"), (broken, broken, "float32")]
    with pytest.raises(OSError, match="disk gone"):
        fused_scan.select_top_k(readers, [3000, 3000], k=5000, floor=0.0, threads=2, chunk=1000)


def test_mixed_dtypes_fall_back_to_torch(monkeypatch):
    scans = count_fused_scans(monkeypatch)
    base, tuned = tied_pair(seed=4)
    tuned = {n: v.double() for n, v in tuned.items()}
    got = CoreRegion.from_update(base, tuned, top_p=0.05, progress=False)
    assert scans == []
    want = reference(base, tuned, 0.05)
    assert {n: torch.as_tensor(got.indices(n)).long().tolist() for n in got.names()} == \
        {n: v.tolist() for n, v in want.items()}


def test_reads_ask_for_read_ahead_only_when_pages_are_missing(monkeypatch, tmp_path):
    """`raw_reader` reads with RWF_NOWAIT: a warm file costs no hint; a miss asks the kernel for the
    next PREFETCH entries once, then reads blocking; a file system without RWF_NOWAIT reads plainly."""
    import errno
    import os

    from safe_cpift.regions import scoring

    data = torch.arange(50_000, dtype=torch.float32)
    path = write(tmp_path, "ckpt", {"w": data})
    real_preadv, hints, calls = os.preadv, [], []

    def preadv(fd, bufs, pos, flags=0, *, miss=set()):  # noqa: B006 -- the set remembers the first miss
        calls.append(flags)
        if flags and behaviour == "miss" and not miss:
            miss.add(pos)
            raise BlockingIOError(errno.EAGAIN, "not cached")
        if flags and behaviour == "unsupported":
            raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT")
        return real_preadv(fd, bufs, pos, flags)

    monkeypatch.setattr(scoring.os, "preadv", preadv)
    monkeypatch.setattr(scoring.os, "posix_fadvise", lambda fd, off, n, advice: hints.append((off, n, advice)))
    for behaviour in ("warm", "miss", "unsupported"):
        hints.clear(), calls.clear()
        src = scoring.TensorSource(path)
        read = src.raw_reader("w")
        buf = np.empty(50_000, np.float32)
        for start in range(0, 50_000, 10_000):
            assert np.array_equal(read(start, start + 10_000, buf), data[start:start + 10_000].numpy())
        if behaviour == "warm":
            assert hints == [] and all(f == os.RWF_NOWAIT for f in calls)
        elif behaviour == "miss":
            assert len(hints) == 1 and hints[0][1] == 4 * scoring.PREFETCH and hints[0][2] == os.POSIX_FADV_WILLNEED
        else:
            assert hints == [] and calls[0] == os.RWF_NOWAIT and set(calls[1:]) == {0}
        read_plain = scoring.TensorSource(path).raw_reader("w", read_ahead=False)
        calls.clear(), hints.clear()
        assert np.array_equal(read_plain(20_000, 30_000, buf), data[20_000:30_000].numpy())
        assert hints == [] and set(calls) == {0}, behaviour  # scattered sample reads: own bytes only


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mapped_reader_gives_views_of_the_file(tmp_path, dtype):
    from safe_cpift.regions import scoring

    data = {"a": torch.randn(3, 1000).to(dtype), "b": torch.randn(777).to(dtype)}
    path = write(tmp_path, "ckpt", data)
    src = scoring.TensorSource(path)
    for name, value in data.items():
        read = src.mapped_reader(name)
        bits = value.reshape(-1).view(scoring.RAW_DTYPES[dtype]).numpy()
        whole, part = read(0, bits.size, None), read(5, 700, None)
        assert np.array_equal(whole, bits) and np.array_equal(part, bits[5:700])
        assert np.shares_memory(whole, part) and whole.flags.writeable  # no copy; the kernels' one signature
    src.close()
    assert np.array_equal(whole, bits)  # a view outlives close(): the mapping goes with the last view
    mem = scoring.TensorSource({"w": torch.ones(10)})  # in memory: views of the tensor itself
    assert np.array_equal(mem.mapped_reader("w")(2, 5, None), np.ones(3, np.float32))
    assert scoring.TensorSource({"w": torch.ones(10, dtype=torch.float64)}).mapped_reader("w") is None


def test_fused_extraction_of_a_checkpoint_maps_it_and_samples_without_read_ahead(monkeypatch, tmp_path):
    """The fused scan reads mapped views (no `pread`); the sample before it reads its scattered blocks
    without asking the kernel to read ahead (whose 4 KiB pages would map slower afterwards)."""
    import os

    from safe_cpift.regions import scoring

    base, tuned = tied_pair(seed=5)
    dirs = write(tmp_path, "base", base), write(tmp_path, "tuned", tuned)
    flags, hints = [], []
    real_preadv = os.preadv
    monkeypatch.setattr(scoring.os, "preadv", lambda fd, bufs, pos, f=0: flags.append(f) or real_preadv(fd, bufs, pos, f))
    monkeypatch.setattr(scoring.os, "posix_fadvise", lambda *a: hints.append(a))
    scans = count_fused_scans(monkeypatch)
    got = CoreRegion.from_update(*dirs, top_p=0.05, num_threads=2, progress=False)
    assert len(scans) == 1 and scans[0] is not None
    assert flags and set(flags) == {0} and hints == []
    want = reference(base, tuned, 0.05)
    assert {n: torch.as_tensor(got.indices(n)).long().tolist() for n in got.names()} == \
        {n: v.tolist() for n, v in want.items()}


def test_select_top_k_equals_a_stable_ranking_for_any_chunking_and_threads(monkeypatch):
    """Heavy ties split across chunks and threads: the picks (tallied per chunk, then picked side by
    side) are exactly the first k of a stable descending ranking over (tensor, index)."""
    monkeypatch.setattr(fused_scan, "MAX_POOL", 1e9)
    rng = np.random.default_rng(0)
    for trial in range(60):
        numels = [int(x) for x in rng.integers(0, 3000, size=rng.integers(1, 5))]
        tuned = [rng.integers(0, 4, size=n).astype(np.float32) * np.float32(0.25) for n in numels]
        if not sum(numels):
            continue
        zero = np.zeros(max(numels), np.float32)
        readers = [(lambda s, e, buf, z=zero: z[s:e], lambda s, e, buf, t=t: t[s:e], "float32") for t in tuned]
        k = int(rng.integers(1, sum(numels) + 1))
        threads, chunk = int(rng.integers(1, 4)), int(rng.integers(1, 500))
        got, _ = fused_scan.select_top_k(readers, numels, k, 0.0, threads, chunk=chunk)
        ids = np.concatenate([np.stack([np.full(n, t), np.arange(n)], 1) for t, n in enumerate(numels)])
        want: dict[int, list[int]] = {}
        for t, i in ids[np.argsort(-np.concatenate(tuned), kind="stable")[:k]]:
            want.setdefault(int(t), []).append(int(i))
        assert {t: v.tolist() for t, v in got.items()} == {t: sorted(v) for t, v in want.items()}, (trial, threads, chunk)


@pytest.mark.parametrize("target", [1.0, 37.5, 400.0, 2_000.0, 6_179.0, 6_180.0, 6_180.5])
def test_weighted_floor_by_radix_equals_the_sorted_sample(monkeypatch, target):
    """`estimate_floor` with the kernels (a weighted radix select) gives the value of the partition-and-sort
    path, with ties, bfloat16 parts, an empty part and values spanning many high-bit buckets."""
    g = torch.Generator().manual_seed(4)
    ties = torch.full((40,), 0.25)
    samples = [(0, torch.cat([torch.rand(300, generator=g), ties]), 7.0),
               (1, torch.rand(50, generator=g) * 2, 1.0),
               (2, torch.rand(1000, generator=g).to(torch.bfloat16), 3.5), (3, torch.rand(0), 2.0),
               (4, torch.exp(torch.randn(500, generator=g) * 8), 0.5)]
    monkeypatch.setattr(region_select, "RADIX_FLOOR_MIN", 1)
    got = region_select.estimate_floor(samples, target)
    monkeypatch.setattr(fused, "kernels", lambda load=True: None)  # the numpy path
    want = region_select.estimate_floor(samples, target)
    total = sum(s.numel() * w for _, s, w in samples)  # 6180
    assert got == want and (want is None) == (target >= total), (got, want)  # all of it: keep all


def test_weighted_floor_falls_back_on_nan_and_negative_scores(monkeypatch):
    monkeypatch.setattr(region_select, "RADIX_FLOOR_MIN", 1)
    calls = []
    real = fused.weighted_floor_bits
    monkeypatch.setattr(fused, "weighted_floor_bits", lambda *a: calls.append(1) or real(*a))
    for bad in (float("nan"), -0.0, -1.0):
        samples = [(0, torch.tensor([0.5, 0.25, bad, 1.0]), 1.0)]
        got = region_select.estimate_floor(samples, 2.0)
        with monkeypatch.context() as m:
            m.setattr(fused, "kernels", lambda load=True: None)
            assert got == region_select.estimate_floor(samples, 2.0) and not calls, bad
    assert region_select.estimate_floor([(0, torch.tensor([0.5, 0.25, 1.0]), 1.0)], 2.0) == 0.5 and calls
