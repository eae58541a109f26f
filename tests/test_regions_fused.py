"""The fused numba kernel (`regions.fused`) against numpy, and fused vs torch region extraction
against an exact reference ranking. numba is in the dev extra: these tests fail without it."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_llama

from safe_cpift.io import ShardedWriter
from safe_cpift.regions import CoreRegion, fused
from safe_cpift.regions import select as region_select
from safe_cpift.regions.scoring import natural_key


@pytest.fixture(autouse=True)
def kernel_loaded():
    # the dev extra installs numba: without it this fails rather than test nothing new
    assert fused.warm_up(), "numba is missing: pip install -c constraints-cpu.txt -e '.[dev]'"


def test_kernel_is_loaded_only_where_it_pays(monkeypatch):
    monkeypatch.setattr(fused, "_KERNEL", None)
    monkeypatch.setattr(fused, "_TRIED", False)
    assert not fused.worth_it(10_000) and not fused._TRIED  # a small pair: numba is not even imported
    monkeypatch.setattr(fused, "MIN_ENTRIES", 10_000)
    assert fused.worth_it(10_000) and fused.kernel(load=False) is not None
    monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")
    assert not fused.worth_it(10**12) and fused.kernel() is None


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4099])
def test_cut_at_equals_numpy(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32)
    b = a + (rng.standard_normal(n) * 1e-2).astype(np.float32)
    b[::5] = a[::5] + np.float32(0.25)  # ties at a cut value
    if n > 8:
        b[3], a[4], b[5], a[6] = np.nan, np.inf, np.inf, -0.0  # NaN and inf - inf never pass
    d = np.abs(b - a)
    bufs = np.empty(n, np.int32), np.empty(n, np.float32)
    for value in (0.0, 1e-3, float(d[0]), 0.25, 10.0):
        for strict in (False, True):
            want = np.flatnonzero(d > np.float32(value) if strict else d >= np.float32(value))
            idx, vals = fused.cut_at(a, b, value, strict, *bufs)
            assert np.array_equal(idx, want), (value, strict)
            assert np.array_equal(vals, d[want])


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


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("top_p", [0.01, 0.08, 0.2])
def test_fused_and_torch_paths_equal_the_reference(monkeypatch, tmp_path, threads, top_p):
    monkeypatch.setattr(region_select, "FUSED_CHUNK", 1000)  # many chunks, pool reductions mid-scan
    calls = []
    real = fused.cut_at
    monkeypatch.setattr(fused, "cut_at", lambda *a, **k: calls.append(1) or real(*a, **k))
    base, tuned = tied_pair()
    want = reference(base, tuned, top_p)
    dirs = write(tmp_path, "base", base), write(tmp_path, "tuned", tuned)
    for src in ((base, tuned), dirs):  # in-memory views and pread from sharded checkpoints
        calls.clear()
        got = CoreRegion.from_update(*src, top_p=top_p, num_threads=threads, progress=False)
        assert calls, "the fused kernel did not run"
        monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")
        plain = CoreRegion.from_update(*src, top_p=top_p, num_threads=threads, progress=False)
        monkeypatch.delenv("SAFE_CPIFT_FUSED")
        assert got == plain
        assert sorted(got.names()) == sorted(want), src
        for n, idx in want.items():
            assert torch.equal(torch.as_tensor(got.indices(n)).long(), idx), n


def test_fused_path_stays_exact_when_the_sampled_floor_is_wrong(monkeypatch, tmp_path):
    base, tuned = tied_pair(seed=2)
    want = reference(base, tuned, 0.05)
    dirs = write(tmp_path, "base", base), write(tmp_path, "tuned", tuned)
    monkeypatch.setattr(region_select, "FUSED_CHUNK", 777)
    for floor in (0.0, 0.5, 0.6):  # far too low (all entries are candidates), at the ties, too high (second pass)
        monkeypatch.setattr(region_select, "estimate_floor", lambda *a, _f=floor, **k: _f)
        got = CoreRegion.from_update(*dirs, top_p=0.05, progress=False)
        for n, idx in want.items():
            assert torch.equal(torch.as_tensor(got.indices(n)).long(), idx), (floor, n)


def test_mixed_dtypes_fall_back_to_torch(monkeypatch):
    calls = []
    real = fused.cut_at
    monkeypatch.setattr(fused, "cut_at", lambda *a, **k: calls.append(1) or real(*a, **k))
    base, tuned = tied_pair(seed=4)
    tuned = {n: v.double() for n, v in tuned.items()}
    got = CoreRegion.from_update(base, tuned, top_p=0.05, progress=False)
    assert calls == []
    want = reference(base, tuned, 0.05)
    assert {n: torch.as_tensor(got.indices(n)).long().tolist() for n in got.names()} == \
        {n: v.tolist() for n, v in want.items()}
