"""Per-tensor spherical interpolation (SLERP) and its N-model, order-free generalisation.

The math follows the standard per-tensor SLERP used by mergekit: the angle is measured between the
*normalised* flattened tensors, the interpolation weights are applied to the *original* tensors, and
the result falls back to linear interpolation when the two directions are (anti)colinear.

Numerics: dot products and norms are accumulated in float64 over 64K-element chunks (a float32
reduction over a 33M-element embedding loses ~1e-3 relative accuracy, enough to get the angle
wrong; chunks this small stay in cache while converted, ~3x faster than 1M-element ones); the weighted sum is computed in float32 (float64 for float64 inputs) chunk by chunk and
written straight into an output of the input dtype, so peak extra memory is a few chunks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from safe_cpift.merge import kernels

logger = logging.getLogger(__name__)

__all__ = ["slerp", "slerp_weights", "lerp", "spherical_mean", "DOT_THRESHOLD"]

DOT_THRESHOLD = 0.9995
_SUM_CHUNK = 1 << 18  # elements per chunk of the weighted sums (buffers stay in L2)
_DOT_CHUNK = 1 << 16  # elements per float64 dot product (converted chunks stay in cache)
_MAX_ITER = 500  # fixed-point steps of the spherical mean (it settles in tens for fine-tuned models)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_pair(v0: torch.Tensor, v1: torch.Tensor) -> None:
    if not isinstance(v0, torch.Tensor) or not isinstance(v1, torch.Tensor):
        raise TypeError("`v0` and `v1` must be torch tensors")
    if v0.shape != v1.shape:
        raise ValueError(f"`v0` and `v1` must have the same shape, got {tuple(v0.shape)} and {tuple(v1.shape)}")
    if not v0.is_floating_point() or not v1.is_floating_point():
        raise TypeError(f"slerp needs floating-point tensors, got {v0.dtype} and {v1.dtype}")


def _gram(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float64 Gram matrix G[i, j] = <v_i, v_j> of flattened tensors, accumulated chunk by chunk.

    Each chunk of `_DOT_CHUNK` elements is converted to float64 and its dot products added to float64
    totals. Each entry is its own `torch.dot` (not one matmul), so
    G[i, j] is bitwise G[j, i] and swapping two inputs swaps the matrix exactly: this keeps
    `slerp(0.5, a, b)` bitwise equal to `slerp(0.5, b, a)`.
    """
    if len(vectors) == 2:
        kern, a, b = kernels.kernels(load=False), kernels.as_float32(vectors[0]), kernels.as_float32(vectors[1])
        if kern is not None and a is not None and b is not None:  # the compiled pass (`merge.kernels`)
            aa, ab, bb = kernels.dots2(kern, a, b)
            return torch.tensor([[aa, ab], [ab, bb]], dtype=torch.float64)
    flats = [v.reshape(-1) for v in vectors]
    n = len(flats)
    acc = [[0.0] * n for _ in range(n)]
    for start in range(0, flats[0].numel(), _DOT_CHUNK):
        block = [f[start : start + _DOT_CHUNK].to(torch.float64) for f in flats]
        for i in range(n):
            row = acc[i]
            for j in range(i, n):
                row[j] += float(torch.dot(block[i], block[j]))
    gram = torch.tensor(acc, dtype=torch.float64)
    return gram.triu() + gram.triu(1).T


def _weighted_sum(weights: Sequence[float], vectors: Sequence[torch.Tensor], like: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i weights[i] * vectors[i], computed in float32 (float64 for float64) chunk by chunk.

    Products are rounded before they are added (no fused multiply-add), so equal weights make the
    sum bitwise independent of the order of two inputs. Two preallocated chunk buffers are reused
    (fresh multi-MB temporaries would each be page-faulted in again), and an output in the compute
    dtype is written in place: `out` (its first `like.numel()` entries, `like`'s dtype) when given.
    """
    cdtype = _compute_dtype(like.dtype)
    numel = like.numel()
    out = _output(like, out)
    if len(vectors) == 2 and like.dtype == torch.float32:
        kern, a, b = kernels.kernels(load=False), kernels.as_float32(vectors[0]), kernels.as_float32(vectors[1])
        if kern is not None and a is not None and b is not None:  # the compiled pass, bit for bit the same
            kernels.weighted_sum(kern, a, b, weights[0], weights[1], out.numpy())
            return out.view(like.shape)
    flats = [v.reshape(-1) for v in vectors]
    size = min(_SUM_CHUNK, numel)
    tmp = torch.empty(size, dtype=cdtype, device=like.device)
    acc_buf = None if like.dtype == cdtype else torch.empty(size, dtype=cdtype, device=like.device)
    for start in range(0, numel, _SUM_CHUNK):
        stop = min(numel, start + _SUM_CHUNK)
        acc = out[start:stop] if acc_buf is None else acc_buf[: stop - start]
        for i, (w, f) in enumerate(zip(weights, flats, strict=True)):
            part = f[start:stop]
            dst = acc if i == 0 else tmp[: stop - start]
            if part.dtype != cdtype:
                part = dst.copy_(part)
            torch.mul(part, w, out=dst)
            if i:
                acc.add_(dst)
        if acc_buf is not None:
            out[start:stop] = acc
    return out.view(like.shape)


def _output(like: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """A flat tensor for `like.numel()` results of `like`'s dtype: `out`'s first entries, or a new one."""
    if out is None:
        return torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    if out.dtype != like.dtype or not out.is_contiguous() or out.numel() < like.numel():
        raise ValueError(f"`out` must be a contiguous {like.dtype} tensor of at least {like.numel()} entries")
    return out.view(-1)[: like.numel()]


def lerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Linear interpolation `(1 - t) * v0 + t * v1`, computed in float32 or better.

    Args:
        t (`float`): interpolation factor; `0` returns `v0` exactly, `1` returns `v1` exactly.
        v0 (`torch.Tensor`): first endpoint.
        v1 (`torch.Tensor`): second endpoint, same shape as `v0`.

    Returns:
        `torch.Tensor`: a new tensor with the dtype and shape of `v0`.
    """
    _check_pair(v0, v1)
    t = float(t)
    if t == 0.0:
        return v0.clone()
    if t == 1.0:
        return v1.to(v0.dtype, copy=True)
    return _weighted_sum([1.0 - t, t], [v0, v1], v0)


def slerp(
    t: float,
    v0: torch.Tensor,
    v1: torch.Tensor,
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = 1e-8,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Spherical linear interpolation between two tensors of the same shape.

    The angle `theta = acos(<v0/|v0|, v1/|v1|>)` is taken between the normalised flattened tensors and
    the result is `sin((1-t) theta)/sin(theta) * v0 + sin(t theta)/sin(theta) * v1` on the original
    tensors (so differing norms are interpolated too).

    Args:
        t (`float`): interpolation factor in `[0, 1]`; `t=0` returns `v0` and `t=1` returns `v1` exactly.
        v0 (`torch.Tensor`): first endpoint (any floating dtype, bf16 included).
        v1 (`torch.Tensor`): second endpoint, same shape as `v0`.
        dot_threshold (`float`, *optional*, defaults to `0.9995`): when `|cos theta|` exceeds it the
            directions are (anti)colinear and plain linear interpolation is used instead.
        eps (`float`, *optional*, defaults to `1e-8`): zero-norm guard; if either tensor's norm is below
            it, the angle is undefined and linear interpolation is used.
        out (`torch.Tensor`, *optional*): a contiguous tensor of `v0`'s dtype with at least `v0.numel()`
            entries to write the result into (e.g. a reused buffer); by default a new tensor.

    Returns:
        `torch.Tensor`: the result, with the dtype and shape of `v0` (a view of `out` when given).
    """
    _check_pair(v0, v1)
    weights = slerp_weights(t, v0, v1, dot_threshold, eps)
    if weights is None:  # t = 0 or 1: an exact copy of that end
        end = v0 if float(t) == 0.0 else v1
        if out is None:
            return end.to(v0.dtype, copy=True)
        return _output(v0, out).copy_(end.reshape(-1)).view(v0.shape)
    return _weighted_sum(list(weights), [v0, v1], v0, out)


def slerp_weights(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = DOT_THRESHOLD,
                  eps: float = 1e-8) -> tuple[float, float] | None:
    """The weights `(w0, w1)` with `slerp(t, v0, v1) = w0 * v0 + w1 * v1` (each product rounded to the
    compute dtype, then added): the SLERP weights from the dot products, or `(1 - t, t)` where `slerp`
    falls back to linear interpolation. None for `t` = 0 or 1, where `slerp` copies that end exactly.
    Arguments as in `slerp`."""
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"`t` must be in [0, 1], got {t}")
    if t == 0.0 or t == 1.0:
        return None
    gram = _gram([v0, v1])
    return weights_from_dots(t, float(gram[0, 0]), float(gram[0, 1]), float(gram[1, 1]), dot_threshold, eps)


def weights_from_dots(t: float, aa: float, ab: float, bb: float, dot_threshold: float = DOT_THRESHOLD,
                      eps: float = 1e-8) -> tuple[float, float]:
    """`slerp_weights` for 0 < t < 1 from the float64 dot products (v0·v0, v0·v1, v1·v1)."""
    n0, n1 = math.sqrt(aa), math.sqrt(bb)
    if n0 < eps or n1 < eps:
        return 1.0 - t, t
    dot = ab / (n0 * n1)
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > dot_threshold:
        return 1.0 - t, t
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def _check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Weights as floats normalised to sum 1 (`None`: equal); non-negative, finite, at least one positive."""
    if weights is None:
        return [1.0 / n] * n
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) != n:
        raise ValueError(f"`weights` must be a list of {n} numbers (one per tensor), got {weights!r}")
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(f"`weights` must be numbers, got {weights!r}") from None
    if any(not math.isfinite(w) or w < 0 for w in ws) or not sum(ws) > 0:
        raise ValueError(f"`weights` must be finite, >= 0 and not all 0, got {ws}")
    total = math.fsum(ws)
    return [w / total for w in ws]


def _karcher_coefficients(cos: torch.Tensor, w: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor | None:
    """Coefficients `a` of the weighted spherical (Karcher) mean `m = sum_i a_i u_i` of unit vectors `u_i`.

    `m` minimises `sum_i w_i angle(m, u_i)^2` on the sphere; it lies in the span of the `u_i`, so the
    fixed-point iteration of Buss & Fillmore (2001) runs on the N x N cosine matrix alone, in float64:
    `q <- exp_q(sum_i w_i log_q(u_i))` with `log_q(u) = theta / sin(theta) * (u - cos(theta) q)`. Returns
    `None` if the mean is undefined (the weighted directions cancel) or the iteration does not settle.
    """
    start = float(w @ cos @ w)
    if start <= 1e-12:
        return None
    a = w / math.sqrt(start)
    for _ in range(max_iter):
        c = (cos @ a).clamp(-1.0, 1.0)
        theta = torch.arccos(c)
        sin = torch.sin(theta)
        small = theta < 1e-6
        k = torch.where(small, 1.0 + theta * theta / 6.0, theta / torch.where(small, 1.0, sin))
        b = w * k - float((w * k * c).sum()) * a  # tangent step sum_i w_i log_q(u_i), in coefficients
        step = math.sqrt(max(float(b @ cos @ b), 0.0))
        if step < tol:
            return a
        a = math.cos(step) * a + (math.sin(step) / step) * b
        a = a / math.sqrt(float(a @ cos @ a))
    return None


def spherical_mean(
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Weighted N-model SLERP: the weighted spherical mean of N >= 2 tensors, independent of their order.

    With unit directions `u_i = v_i / |v_i|` and weights `w_i` (normalised to sum 1), the direction
    `m = sum_i a_i u_i` is the weighted spherical (Karcher) mean, the point of the sphere minimising
    `sum_i w_i angle(m, u_i)^2` (Buss & Fillmore 2001). For two tensors it is the SLERP point, so
    `spherical_mean([v0, v1], [1 - t, t]) == slerp(t, v0, v1)`; as in `slerp`, the coefficients `a_i` are
    applied to the *original* tensors (`sum_i a_i v_i`), so tensors of equal norm `r` give a result of
    norm `r` and differing norms are interpolated too.

    Special cases, mirroring `slerp`: tensors of weight 0 are left out (so they change nothing); one
    tensor left is returned as a copy and two go through `slerp` itself (bitwise equal to it). The
    weighted linear mean `sum_i w_i v_i` is used when a norm is below `eps`, when every pair of
    directions is nearly colinear (all cosines above `dot_threshold`, where SLERP and linear
    interpolation agree), when a pair is nearly opposite (a cosine below `-dot_threshold`, where no mean
    direction is defined) or when the weighted directions cancel.

    The result does not depend on the order of `tensors` (with `weights` in the same order) up to float
    rounding of the sums; `fuse` passes them in sorted task-name order, which makes it reproducible
    bitwise. Cost: one float64 Gram pass and one weighted-sum pass over the tensors; the iteration
    itself runs on an N x N matrix.

    Args:
        tensors (`Sequence[torch.Tensor]`): at least two floating tensors of the same shape.
        weights (`Sequence[float]`, *optional*): one non-negative weight per tensor (normalised to sum 1);
            equal weights when `None`.
        dot_threshold (`float`, *optional*, defaults to `0.9995`): colinearity threshold (see above).
        eps (`float`, *optional*, defaults to `1e-8`): zero-norm guard.

    Returns:
        `torch.Tensor`: a new tensor with the dtype and shape of `tensors[0]`.

    Example:
        ```python
        >>> a, b, c = torch.randn(3, 1000).unbind()
        >>> out = spherical_mean([a, b, c], weights=[0.5, 0.3, 0.2])
        >>> torch.allclose(spherical_mean([a, b], [0.7, 0.3]), slerp(0.3, a, b))
        True
        ```
    """
    tensors = list(tensors)
    if len(tensors) < 2:
        raise ValueError(f"`tensors` needs at least 2 tensors, got {len(tensors)}")
    for other in tensors[1:]:
        _check_pair(tensors[0], other)
    like = tensors[0]
    ws = _check_weights(weights, len(tensors))
    kept = [i for i, w in enumerate(ws) if w > 0]
    if len(kept) == 1:
        return tensors[kept[0]].to(like.dtype, copy=True)
    vs = [tensors[i] for i in kept]
    ws = [ws[i] for i in kept]
    if len(vs) == 2:
        return slerp(ws[1] / (ws[0] + ws[1]), vs[0], vs[1], dot_threshold=dot_threshold, eps=eps).to(like.dtype)
    gram = _gram(vs)
    norms = gram.diagonal().clamp_min(0).sqrt()
    if bool((norms < eps).any()):
        return _weighted_sum(ws, vs, like)
    cos = (gram / (norms[:, None] * norms[None, :])).clamp(-1.0, 1.0)
    off = cos[~torch.eye(len(vs), dtype=torch.bool)]
    if bool((off > dot_threshold).all()) or bool((off < -dot_threshold).any()):
        return _weighted_sum(ws, vs, like)
    coef = _karcher_coefficients(cos, torch.tensor(ws, dtype=torch.float64), tol=1e-13, max_iter=_MAX_ITER)
    if coef is None:
        logger.warning("weighted spherical mean undefined for these directions (they cancel); using the linear mean")
        return _weighted_sum(ws, vs, like)
    return _weighted_sum(coef.tolist(), vs, like)
