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


def ref_spherical_mean(vs, ws, iters=20000):
    """Float64 reference in the ambient space: Buss-Fillmore iteration on the unit vectors, then the
    coefficients of the mean in the unit vectors (least squares) applied to the original tensors."""
    V = torch.stack([v.double().flatten() for v in vs])
    U = V / V.norm(dim=1, keepdim=True)
    w = torch.tensor(ws, dtype=torch.float64)
    w = w / w.sum()
    q = w @ U
    q = q / q.norm()
    for _ in range(iters):
        c = (U @ q).clamp(-1, 1)
        th = torch.arccos(c)
        k = torch.where(th < 1e-8, torch.ones_like(th), th / torch.sin(th))
        step = w @ (k[:, None] * (U - c[:, None] * q[None]))
        n = step.norm()
        if n < 1e-15:
            break
        q = torch.cos(n) * q + torch.sin(n) * step / n
        q = q / q.norm()
    a = torch.linalg.lstsq(U.T, q[:, None]).solution[:, 0]
    return (a @ V).view(vs[0].shape)


@pytest.mark.parametrize("n", [3, 4, 6])
def test_weighted_mean_matches_float64_reference(n):
    g = torch.Generator().manual_seed(10 + n)
    vs = [(1.0 + i) * torch.randn(40, 9, generator=g) for i in range(n)]  # different norms
    ws = (0.1 + torch.rand(n, generator=g)).tolist()
    got = spherical_mean(vs, ws)
    assert got.shape == vs[0].shape and got.dtype == torch.float32
    assert rel(got, ref_spherical_mean(vs, ws)) < 1e-6
    # not the linear mean, and not the equal-weight mean
    assert rel(got, sum(w * v for w, v in zip(ws, vs, strict=True)) / sum(ws)) > 1e-3
    assert rel(got, spherical_mean(vs)) > 1e-3
    assert rel(spherical_mean(vs), ref_spherical_mean(vs, [1.0] * n)) < 1e-6


@pytest.mark.parametrize("t", [0.0, 0.1, 0.3, 0.5, 0.77, 1.0])
def test_weighted_two_models_is_slerp(t):
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(30, 7, generator=g), 2.5 * torch.randn(30, 7, generator=g)
    assert torch.equal(spherical_mean([a, b], [1 - t, t]), slerp(t, a, b))
    assert torch.equal(spherical_mean([a, b], [3 * (1 - t), 3 * t]), slerp(t, a, b))  # weights are normalised
    assert rel(spherical_mean([a, b], [1 - t, t]), ref_slerp(t, a, b)) < 1e-6
    if 0 < t < 1:  # the N-model definition itself (reference iteration) agrees with SLERP for N = 2
        assert rel(ref_spherical_mean([a, b], [1 - t, t]).float(), ref_slerp(t, a, b)) < 1e-6


def test_weighted_mean_order_free():
    g = torch.Generator().manual_seed(12)
    vs = [torch.randn(500, generator=g) * (0.5 + i) for i in range(5)]
    ws = [0.4, 0.1, 0.2, 0.25, 0.05]
    out = spherical_mean(vs, ws)
    for perm in ([3, 1, 0, 2, 4], [4, 2, 3, 0, 1]):
        again = spherical_mean([vs[i] for i in perm], [ws[i] for i in perm])
        assert torch.allclose(again, out, atol=1e-6, rtol=0)  # sums reassociated: float rounding only
    # permuting the tensors but not the weights does change the result
    assert not torch.allclose(spherical_mean([vs[i] for i in [3, 1, 0, 2, 4]], ws), out, atol=1e-3)


def test_weighted_mean_zero_weight_drops_the_tensor():
    g = torch.Generator().manual_seed(13)
    a, b, c, d = (torch.randn(64, generator=g) for _ in range(4))
    assert torch.equal(spherical_mean([a, b, c], [0.0, 1.0, 0.0]), b)
    assert torch.equal(spherical_mean([a, d, b], [0.6, 0.0, 0.4]), slerp(0.4, a, b))
    assert torch.equal(spherical_mean([a, b, d, c], [0.2, 0.3, 0.0, 0.5]), spherical_mean([a, b, c], [0.2, 0.3, 0.5]))


def test_equal_norms_stay_on_the_sphere_at_the_weighted_mean():
    g = torch.Generator().manual_seed(14)
    vs = [torch.randn(300, generator=g, dtype=torch.float64) for _ in range(4)]
    vs = [v / v.norm() * 2.0 for v in vs]
    ws = [0.1, 0.2, 0.3, 0.4]
    out = spherical_mean(vs, ws)
    assert out.dtype == torch.float64 and abs(float(out.norm()) - 2.0) < 1e-12
    # first-order optimality of the Karcher mean: sum_i w_i log_m(u_i) = 0
    m = out / out.norm()
    grad = torch.zeros_like(m)
    for w, v in zip(ws, vs, strict=True):
        u = v / v.norm()
        c = float(u @ m)
        th = math.acos(c)
        grad += w * th / math.sin(th) * (u - c * m)
    assert float(grad.norm()) < 1e-10


def test_weighted_mean_fallbacks():
    g = torch.Generator().manual_seed(15)
    v = torch.randn(64, generator=g)
    near = [v, 1.5 * v + 1e-6 * torch.randn(64, generator=g), 0.7 * v + 1e-6 * torch.randn(64, generator=g)]
    ws = [0.2, 0.3, 0.5]
    linear = 0.2 * near[0].double() + 0.3 * near[1].double() + 0.5 * near[2].double()
    assert rel(spherical_mean(near, ws), linear) < 1e-6  # all colinear: linear mean, as slerp does
    opposite = [v, -v + 1e-6 * torch.randn(64, generator=g), torch.randn(64, generator=g)]
    linear = sum(w * x.double() for w, x in zip(ws, opposite, strict=True))
    assert rel(spherical_mean(opposite, ws), linear) < 1e-6  # an opposite pair: no mean direction
    zero = [torch.zeros(64), v, torch.randn(64, generator=g)]
    assert torch.isfinite(spherical_mean(zero, ws)).all()


def test_weighted_mean_bad_weights():
    vs = [torch.randn(4) for _ in range(3)]
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 1.0], "abc"):
        with pytest.raises(ValueError, match="`weights`"):
            spherical_mean(vs, bad)


def test_spherical_mean_needs_two():
    with pytest.raises(ValueError, match="at least 2"):
        spherical_mean([torch.ones(3)])


def test_half_way_is_bitwise_symmetric():
    g = torch.Generator().manual_seed(7)
    for shape in [(33,), (64, 48), (1100, 1000)]:
        a, b = torch.randn(shape, generator=g), 0.3 * torch.randn(shape, generator=g)
        assert torch.equal(slerp(0.5, a, b), slerp(0.5, b, a))


def test_slerp_writes_into_a_given_buffer():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    buf = torch.full((30,), -1.0)
    for t in (0.0, 0.3, 1.0):
        got = slerp(t, a, b, out=buf)
        assert torch.equal(got, slerp(t, a, b)) and got.shape == a.shape
        assert got.data_ptr() == buf.data_ptr() and torch.equal(buf[20:], torch.full((10,), -1.0))
    with pytest.raises(ValueError, match="`out` must be a contiguous torch.float32 tensor of at least 20"):
        slerp(0.3, a, b, out=torch.empty(19))
    with pytest.raises(ValueError, match="`out`"):
        slerp(0.3, a, b, out=torch.empty(20, dtype=torch.float64))


def test_slerp_weights_are_what_slerp_sums():
    from safe_cpift.merge.slerp import slerp_weights

    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(40, generator=g), torch.randn(40, generator=g)
    w0, w1 = slerp_weights(0.3, a, b)
    assert torch.equal(slerp(0.3, a, b), (w0 * a) + (w1 * b))  # float32 products, then the add
    assert slerp_weights(0.3, a, 2 * a) == (0.7, 0.3)  # colinear: linear interpolation
    assert slerp_weights(0.3, a, torch.zeros(40)) == (0.7, 0.3)  # a zero norm: linear too
    assert slerp_weights(0.0, a, b) is None and slerp_weights(1.0, a, b) is None  # exact copies
    with pytest.raises(ValueError, match="`t` must be in"):
        slerp_weights(1.5, a, b)
