"""The compiled fusion kernels (`merge.kernels`, numba from the dev extra): each against torch, and the
whole fuse and SLERP suites again through them, on two threads with every pass split.

The suites of test_merge_fuse.py and test_merge_slerp.py are imported below, so pytest runs each of
their tests a second time here, with the kernels loaded (their models are small: without the
autouse fixture they would take the torch path)."""

import importlib

import numpy as np
import pytest
import torch
from test_merge_fuse import *  # noqa: F403 -- the fuse suite, again through the kernels
from test_merge_fuse import make_region, params, perturbed
from test_merge_slerp import *  # noqa: F403 -- the slerp suite, again through the kernels

from safe_cpift.merge import fuse_with_manifest, kernels

slerp_module = importlib.import_module("safe_cpift.merge.slerp")


@pytest.fixture(scope="module")
def loaded(fusion_kernels):
    return fusion_kernels


@pytest.fixture(autouse=True)
def compiled(loaded, monkeypatch):
    """Passes split over 2 threads from 64 entries on."""
    monkeypatch.setattr(kernels, "MIN_SPLIT", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield loaded
    torch.set_num_threads(threads)


@pytest.mark.parametrize("n", [1, 5, 1000, 70_001])
def test_weighted_sum_is_bitwise_torchs(monkeypatch, n):
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    with kernels.threads(3):
        got = slerp_module._weighted_sum([0.3, 0.7], [a, b], a)
    monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")
    want = slerp_module._weighted_sum([0.3, 0.7], [a, b], a)
    assert torch.equal(got, want)


def test_dots_are_the_same_for_any_thread_count_and_symmetric(compiled):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300_001, generator=g).numpy(), torch.randn(300_001, generator=g).numpy()
    with kernels.threads(1):
        one = kernels.dots2(compiled, a, b)
        swapped = kernels.dots2(compiled, b, a)
    for n in (2, 3, 5):
        with kernels.threads(n):
            assert kernels.dots2(compiled, a, b) == one
    assert swapped == (one[2], one[1], one[0])
    x, y = a.astype(np.float64), b.astype(np.float64)
    assert np.allclose(one, (x @ x, x @ y, y @ y), rtol=1e-12)


def test_member_is_a_merge_walk(compiled):
    rng = np.random.default_rng(0)
    for dtype in (np.int32, np.int64):
        keys = np.unique(rng.integers(0, 5000, 800)).astype(dtype)
        pool = np.unique(rng.integers(0, 5000, 1200)).astype(dtype)
        mask = np.zeros(keys.shape, dtype=np.bool_)
        compiled.member(keys, pool, mask)
        assert np.array_equal(mask, np.isin(keys, pool))


def test_transplant_rule_larger_delta_nan_loses_ties_to_the_first(compiled):
    base = np.zeros(8, np.float32)
    a = np.array([1, 1, 1, 5, 1, np.nan, np.nan, 1], np.float32)
    b = np.array([2, 2, 3, 2, 1, 4, np.nan, np.nan], np.float32)
    out = np.full(8, -1, np.float32)
    ia, ib = np.array([0, 3, 4, 5, 6, 7]), np.array([1, 2, 3, 4, 5, 6, 7])
    with kernels.threads(2):
        counts = kernels.transplant(compiled, out, base, a, b, ia, ib)
    # 0: a only; 1, 2: b only; 3: |5| > |2| -> a; 4: tie -> a; 5: a NaN -> b; 6: both NaN -> a; 7: b NaN -> a
    assert np.array_equal(out, np.array([1, 2, 3, 5, 1, 4, np.nan, 1], np.float32), equal_nan=True)
    assert counts.tolist() == [5, 3, 5]  # won by a, won by b, contested


def test_fuse_through_the_kernels_equals_torch(monkeypatch):
    base = params(__import__("conftest").make_tiny_llama(0))
    A, B = perturbed(base, 1), perturbed(base, 2)
    rng = np.random.default_rng(0)
    regions = {}
    for task, seed in (("a", 1), ("b", 2)):
        rng = np.random.default_rng(seed)
        regions[task] = make_region(base, {n: np.unique(rng.integers(0, v.numel(), v.numel() // 20)).tolist()
                                           for n, v in base.items()})
    protect = make_region(base, {n: np.unique(rng.integers(0, v.numel(), v.numel() // 50)).tolist()
                                 for n, v in base.items()})
    got, got_manifest = fuse_with_manifest(base, {"b": B, "a": A}, regions, protect=protect, t=0.3,
                                           num_threads=2)
    monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")
    want, want_manifest = fuse_with_manifest(base, {"b": B, "a": A}, regions, protect=protect, t=0.3)
    assert got_manifest["counts"] == want_manifest["counts"] and want_manifest["counts"]["conflicts"] > 0
    for name in base:
        exact = regions["a"].mask(name) | regions["b"].mask(name) | protect.mask(name)
        assert torch.equal(got[name][exact], want[name][exact]), name
        assert torch.allclose(got[name], want[name], rtol=0, atol=1e-6), name


def test_loaded_only_for_big_models_or_when_loaded_already(monkeypatch):
    monkeypatch.setattr(kernels._LAZY, "value", None)  # as in a fresh process (restored afterwards)
    monkeypatch.setattr(kernels._LAZY, "tried", False)
    assert not kernels.worth_it(kernels.MIN_ENTRIES - 1) and not kernels._LAZY.tried
    assert kernels.worth_it(kernels.MIN_ENTRIES) and kernels.worth_it(1)  # loaded now: used for any size
    monkeypatch.setenv("SAFE_CPIFT_FUSED", "0")
    assert kernels.kernels() is None and not kernels.worth_it(10**12)


def test_num_threads_must_be_positive():
    base = params(__import__("conftest").make_tiny_llama(0))
    region = make_region(base, {})
    with pytest.raises(ValueError, match="`num_threads` must be >= 1"):
        fuse_with_manifest(base, {"a": base}, {"a": region}, num_threads=0)


@pytest.mark.parametrize("block", [7, 64, 1 << 14])
def test_fused_pass_equals_the_three_passes_bit_for_bit(monkeypatch, block):
    """`fuse2` (sum, cores and protected entries a block at a time) against the compiled passes one after
    another: the same output bit for bit and the same counts, whatever the block and thread split."""
    fuse_module = importlib.import_module("safe_cpift.merge.fuse")
    base = params(__import__("conftest").make_tiny_llama(0))
    A, B = perturbed(base, 1), perturbed(base, 2)
    regions, rng = {}, np.random.default_rng(3)
    for task in ("a", "b"):
        regions[task] = make_region(base, {n: np.unique(rng.integers(0, v.numel(), v.numel() // 20)).tolist()
                                           for n, v in base.items()})
    protect = make_region(base, {n: np.unique(rng.integers(0, v.numel(), v.numel() // 50)).tolist()
                                 for n, v in base.items()})
    monkeypatch.setattr(kernels, "FUSE_BLOCK", block)
    real, used = fuse_module._fuse_pair, []
    monkeypatch.setattr(fuse_module, "_fuse_pair", lambda *a, **k: used.append(real(*a, **k)) or used[-1])
    got, got_manifest = fuse_with_manifest(base, {"b": B, "a": A}, regions, protect=protect, t=0.3, num_threads=3)
    assert used and all(u is not None for u in used)
    monkeypatch.setattr(fuse_module, "_fuse_pair", lambda *a, **k: None)
    want, want_manifest = fuse_with_manifest(base, {"b": B, "a": A}, regions, protect=protect, t=0.3, num_threads=1)
    assert got_manifest["counts"] == want_manifest["counts"] and want_manifest["counts"]["conflicts"] > 0
    assert want_manifest["counts"]["protected_over_task"] > 0
    for name in base:
        assert torch.equal(got[name], want[name]), name
