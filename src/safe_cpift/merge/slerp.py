"""Per-tensor spherical interpolation (SLERP) and its N-model, order-free generalisation.

The math follows the standard per-tensor SLERP used by mergekit: the angle is measured between the
*normalised* flattened tensors, the interpolation weights are applied to the *original* tensors, and
the result falls back to linear interpolation when the two directions are (anti)colinear.

Numerics: dot products and norms are accumulated in float64 over 1M-element chunks (a float32
reduction over a 33M-element embedding loses ~1e-3 relative accuracy, enough to get the angle
wrong); the weighted sum is computed in float32 (float64 for float64 inputs) chunk by chunk and
written straight into an output of the input dtype, so peak extra memory is a few chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["slerp", "lerp", "spherical_mean", "DOT_THRESHOLD"]

DOT_THRESHOLD = 0.9995
_CHUNK = 1 << 20  # elements per chunk for float64 reductions / weighted sums


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

    Each entry is its own `torch.dot` (not one matmul), so G[i, j] is bitwise G[j, i] and swapping
    two inputs swaps the matrix exactly: this keeps `slerp(0.5, a, b)` bitwise equal to `slerp(0.5, b, a)`.
    """
    flats = [v.reshape(-1) for v in vectors]
    n = len(flats)
    gram = torch.zeros(n, n, dtype=torch.float64)
    numel = flats[0].numel()
    for start in range(0, numel, _CHUNK):
        block = [f[start : start + _CHUNK].to(torch.float64) for f in flats]
        for i in range(n):
            for j in range(i, n):
                gram[i, j] += torch.dot(block[i], block[j])
    return gram + gram.triu(1).T


def _weighted_sum(weights: Sequence[float], vectors: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * vectors[i], computed in float32 (float64 for float64) chunk by chunk.

    Products are rounded before they are added (no fused multiply-add), so equal weights make the
    sum bitwise independent of the order of two inputs.
    """
    cdtype = _compute_dtype(like.dtype)
    flats = [v.reshape(-1) for v in vectors]
    out = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    for start in range(0, out.numel(), _CHUNK):
        stop = start + _CHUNK
        acc = flats[0][start:stop].to(cdtype) * weights[0]
        for w, f in zip(weights[1:], flats[1:], strict=True):
            acc += f[start:stop].to(cdtype) * w
        out[start:stop] = acc
    return out.view(like.shape)


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

    Returns:
        `torch.Tensor`: a new tensor with the dtype and shape of `v0`.
    """
    _check_pair(v0, v1)
    t = float(t)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"`t` must be in [0, 1], got {t}")
    if t == 0.0:
        return v0.clone()
    if t == 1.0:
        return v1.to(v0.dtype, copy=True)
    gram = _gram([v0, v1])
    n0, n1 = math.sqrt(float(gram[0, 0])), math.sqrt(float(gram[1, 1]))
    if n0 < eps or n1 < eps:
        return _weighted_sum([1.0 - t, t], [v0, v1], v0)
    dot = float(gram[0, 1]) / (n0 * n1)
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > dot_threshold:
        return _weighted_sum([1.0 - t, t], [v0, v1], v0)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    s0 = math.sin((1.0 - t) * theta) / sin_theta
    s1 = math.sin(t * theta) / sin_theta
    return _weighted_sum([s0, s1], [v0, v1], v0)


def spherical_mean(
    tensors: Sequence[torch.Tensor],
    dot_threshold: float = DOT_THRESHOLD,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Equal-weight, order-free spherical mean of N >= 2 tensors (the N-model SLERP of `fuse`).

    With unit directions `u_i = v_i / |v_i|` and mean resultant length `R = |sum_i u_i| / N`
    (`R = cos(theta/2)` for two tensors at angle `theta`), the result is `mean_i(v_i) / R`: the
    weights `1 / (N R)` are applied to the original tensors. For N = 2 this is exactly
    `slerp(0.5, v0, v1)`, since `sin(theta/2) / sin(theta) = 1 / (2 cos(theta/2))`; for tensors of equal
    norm `r` the result has norm `r` and points along the normalised sum of the directions.

    Linear fallback (plain mean), mirroring `slerp`: when the "effective cosine" `c = 2 R^2 - 1`
    (the pairwise cosine for N = 2) has `|c| > dot_threshold` (all directions nearly colinear, or
    nearly cancelling, where `1/R` would blow up), or when any norm is below `eps`.

    The result does not depend on the order of `tensors` up to float rounding of the sums
    (`fuse` passes them in sorted task-name order, which makes it bitwise reproducible).

    Args:
        tensors (`Sequence[torch.Tensor]`): at least two tensors of the same shape.
        dot_threshold (`float`, *optional*, defaults to `0.9995`): colinearity threshold (see above).
        eps (`float`, *optional*, defaults to `1e-8`): zero-norm guard.

    Returns:
        `torch.Tensor`: a new tensor with the dtype and shape of `tensors[0]`.
    """
    tensors = list(tensors)
    if len(tensors) < 2:
        raise ValueError(f"`tensors` needs at least 2 tensors, got {len(tensors)}")
    for other in tensors[1:]:
        _check_pair(tensors[0], other)
    n = len(tensors)
    gram = _gram(tensors)
    norms = gram.diagonal().clamp_min(0).sqrt()
    mean_w = [1.0 / n] * n
    if bool((norms < eps).any()):
        return _weighted_sum(mean_w, tensors, tensors[0])
    cos = gram / (norms[:, None] * norms[None, :])
    r2 = float(cos.sum()) / (n * n)  # |sum u_i|^2 / N^2
    r2 = min(1.0, max(0.0, r2))
    if abs(2.0 * r2 - 1.0) > dot_threshold:
        return _weighted_sum(mean_w, tensors, tensors[0])
    scale = 1.0 / (n * math.sqrt(r2))
    return _weighted_sum([scale] * n, tensors, tensors[0])
