"""SLERP math: endpoints, lerp fallback, float64 reference, zero-norm guard, dtypes, N-model mean."""

import math

import pytest
import torch

from safe_cpift.merge import lerp, slerp, spherical_mean


def ref_slerp(t, v0, v1, thr=0.9995, eps=1e-8):
    a, b = v0.double().flatten(), v1.double().flatten()
    na, nb = float(a.norm()), float(b.norm())
    dot = float(a @ b) / (na * nb)
    if abs(dot) > thr:
        out = (1 - t) * a + t * b
    else:
        th = math.acos(dot)
        out = math.sin((1 - t) * th) / math.sin(th) * a + math.sin(t * th) / math.sin(th) * b
    return out.view(v0.shape)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_endpoints_exact_and_dtype_shape_kept(dtype):
    g = torch.Generator().manual_seed(1)
    v0 = torch.randn(6, 5, generator=g).to(dtype)
    v1 = torch.randn(6, 5, generator=g).to(dtype)
    assert torch.equal(slerp(0.0, v0, v1), v0)
    assert torch.equal(slerp(1.0, v0, v1), v1)
    assert torch.equal(lerp(0.0, v0, v1), v0)
    assert torch.equal(lerp(1.0, v0, v1), v1)
    out = slerp(0.3, v0, v1)
    assert out.dtype == dtype and out.shape == v0.shape
    assert out.data_ptr() not in (v0.data_ptr(), v1.data_ptr())
    tol = 1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-6
    assert rel(out, ref_slerp(0.3, v0, v1)) < tol


def test_endpoint_is_a_copy():
    v0, v1 = torch.randn(4), torch.randn(4)
    out = slerp(0.0, v0, v1)
    out += 1
    assert not torch.equal(out, v0)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.77])
@pytest.mark.parametrize("shape", [(7,), (16, 8), (3, 5, 4)])
def test_matches_float64_reference(t, shape):
    g = torch.Generator().manual_seed(hash((t, shape)) % 1000)
    v0 = torch.randn(shape, generator=g)
    v1 = 2.5 * torch.randn(shape, generator=g)  # different norms: weights act on the originals
    got = slerp(t, v0, v1)
    assert rel(got, ref_slerp(t, v0, v1)) < 1e-6
    # and it is not just lerp: the two differ for non-colinear inputs
    assert rel(got, lerp(t, v0, v1)) > 1e-3


def test_multi_chunk_tensor_matches_reference():
    # 2.5M elements: more than one 1M-element reduction chunk
    g = torch.Generator().manual_seed(3)
    v0 = torch.randn(2500, 1000, generator=g)
    v1 = v0 + 0.7 * torch.randn(2500, 1000, generator=g)
    assert rel(slerp(0.5, v0, v1), ref_slerp(0.5, v0, v1)) < 1e-6


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_near_colinear_falls_back_to_lerp(sign):
    g = torch.Generator().manual_seed(4)
    v0 = torch.randn(64, generator=g)
    v1 = sign * 1.7 * v0 + 1e-6 * torch.randn(64, generator=g)
    got = slerp(0.4, v0, v1)
    assert torch.equal(got, lerp(0.4, v0, v1))
    assert rel(got, (0.6 * v0.double() + 0.4 * v1.double())) < 1e-6


def test_threshold_controls_fallback():
    v0 = torch.tensor([1.0, 0.0])
    v1 = torch.tensor([math.cos(0.5), math.sin(0.5)])  # cos = 0.8776
    assert torch.equal(slerp(0.5, v0, v1, dot_threshold=0.8), lerp(0.5, v0, v1))
    mid = slerp(0.5, v0, v1)  # true SLERP stays on the unit circle
    assert abs(float(mid.norm()) - 1.0) < 1e-6
    assert abs(float(lerp(0.5, v0, v1).norm()) - 1.0) > 1e-2


def test_zero_norm_guard():
    v0 = torch.zeros(5, 3)
    v1 = torch.randn(5, 3)
    got = slerp(0.5, v0, v1)
    assert torch.isfinite(got).all()
    assert torch.equal(got, lerp(0.5, v0, v1))
    both = slerp(0.5, torch.zeros(3), torch.zeros(3))
    assert torch.equal(both, torch.zeros(3))


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        slerp(0.5, torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="`t`"):
        slerp(1.5, torch.ones(3), torch.ones(3))
    with pytest.raises(TypeError):
        slerp(0.5, torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))


def test_spherical_mean_two_equals_slerp_half():
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        a, b = torch.randn(40, 7, generator=g), 3 * torch.randn(40, 7, generator=g)
        assert rel(spherical_mean([a, b]), slerp(0.5, a, b)) < 1e-6
    c = torch.randn(10)
    assert torch.allclose(spherical_mean([c, 2 * c]), lerp(0.5, c, 2 * c), atol=0, rtol=1e-6)


def test_spherical_mean_order_free_and_norm_preserving():
    g = torch.Generator().manual_seed(6)
    vs = [torch.randn(300, generator=g) for _ in range(4)]
    vs = [v / v.norm() * 2.0 for v in vs]  # equal norms
    out = spherical_mean(vs)
    # permutations agree to float rounding (allclose, not bitwise: sums are reassociated)
    for perm in ([3, 1, 0, 2], [2, 3, 1, 0]):
        assert torch.allclose(spherical_mean([vs[i] for i in perm]), out, atol=1e-6, rtol=0)
    assert abs(float(out.norm()) - 2.0) < 1e-5
    direction = sum(v.double() / v.double().norm() for v in vs)
    assert rel(out / out.norm(), (direction / direction.norm()).float()) < 1e-6


def test_spherical_mean_needs_two():
    with pytest.raises(ValueError, match="at least 2"):
        spherical_mean([torch.ones(3)])


def test_half_way_is_bitwise_symmetric():
    g = torch.Generator().manual_seed(7)
    for shape in [(33,), (64, 48), (1100, 1000)]:
        a, b = torch.randn(shape, generator=g), 0.3 * torch.randn(shape, generator=g)
        assert torch.equal(slerp(0.5, a, b), slerp(0.5, b, a))
