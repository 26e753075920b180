"""Antialiased bicubic resizing with MATLAB ``imresize`` semantics (as in ResizeRight).

Each spatial axis is resized independently by a dense (out x in) weight matrix, so the
whole resize is two matrix products: ``W_h @ x @ W_w^T``. The matrices reproduce the
ResizeRight defaults exactly:

* cubic kernel with a = -0.5 (support 4); when down-scaling by ``s < 1`` the kernel is
  stretched to ``s * cubic(s * t)`` with support ``4 / s`` (antialiasing);
* output size ``ceil(s * n)``; output pixel ``i`` sits at input coordinate
  ``i / s + (n - 1) / 2 - (m - 1) / (2 s)`` (pixel centres aligned, MATLAB convention);
* taps falling outside the image are folded back with a half-sample-symmetric mirror
  (edge pixel repeated), and -- like ResizeRight -- the tap's weight is evaluated at the
  distance to the *mirrored* pixel, not to the virtual out-of-image position;
* each output pixel's weights are normalised to sum to one.
"""
from functools import lru_cache
import math

import numpy as np
import torch

# ResizeRight widens the tap window by float32 machine epsilon, whatever the input dtype.
_EPS = float(np.finfo(np.float32).eps)
_CUBIC_SUPPORT = 4.0


def _cubic(t: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (zero outside |t| <= 2)."""
    a = np.abs(t)
    a2, a3 = a ** 2, a ** 3
    inner = (1.5 * a3 - 2.5 * a2 + 1.0) * (a <= 1.0)
    outer = (-0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0) * ((a > 1.0) & (a <= 2.0))
    return inner + outer


@lru_cache(maxsize=64)
def _weight_matrix(in_size: int, scale: float) -> np.ndarray:
    """Dense float64 (ceil(scale * in_size) x in_size) resampling matrix for one axis."""
    out_size = math.ceil(scale * in_size)
    support = _CUBIC_SUPPORT
    if scale < 1.0:
        support = support / scale

    centres = np.arange(out_size) / scale + (in_size - 1) / 2 - (out_size - 1) / (2 * scale)
    first_tap = np.ceil(centres - support / 2 - _EPS).astype(np.int64)
    taps = first_tap[:, None] + np.arange(math.ceil(support - _EPS))

    # Fold taps into [0, in_size) with the period-2n mirror 0..n-1, n-1..0.
    period = 2 * in_size
    taps = np.mod(taps, period)
    taps = np.where(taps < in_size, taps, period - 1 - taps)

    distance = centres[:, None] - taps
    if scale < 1.0:
        weights = scale * _cubic(scale * distance)
    else:
        weights = _cubic(distance)
    sums = weights.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    weights = weights / sums

    matrix = np.zeros((out_size, in_size))
    rows = np.broadcast_to(np.arange(out_size)[:, None], taps.shape)
    np.add.at(matrix, (rows, taps), weights)
    return matrix


def imresize(x, scale_factor: float):
    """Antialiased bicubic resize by ``scale_factor`` (MATLAB / ResizeRight semantics).

    Args:
        x: either a NumPy array H x W or H x W x C (any trailing axes; the first two are
            resized), or a floating-point torch tensor ... x H x W, typically N x C x H x W
            (the last two axes are resized). Values are not range-restricted.
        scale_factor: positive scale applied to both spatial axes (< 1 down-scales with
            antialiasing, > 1 up-scales), e.g. 1/2, 1/3, 2, 1.5.

    Returns:
        Same container type with spatial size (ceil(s * H), ceil(s * W)). NumPy floating
        inputs keep their dtype (computed in float64), other NumPy dtypes come back as
        float64. Torch outputs keep the input dtype and device and are differentiable
        with respect to ``x``.
    """
    scale = float(scale_factor)
    if not scale > 0:
        raise ValueError(f"scale_factor must be positive, got {scale_factor}")

    if isinstance(x, torch.Tensor):
        if not torch.is_floating_point(x) or x.ndim < 2:
            raise TypeError("torch input must be a floating-point tensor with >= 2 dims")
        w_h = torch.as_tensor(_weight_matrix(x.shape[-2], scale), dtype=x.dtype, device=x.device)
        w_w = torch.as_tensor(_weight_matrix(x.shape[-1], scale), dtype=x.dtype, device=x.device)
        return w_h @ x @ w_w.T

    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"NumPy input must have at least 2 axes (H x W ...), got {x.shape}")
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    w_h = _weight_matrix(x.shape[0], scale)
    w_w = _weight_matrix(x.shape[1], scale)
    y = np.tensordot(w_h, x.astype(np.float64, copy=False), axes=(1, 0))  # h x W x ...
    y = np.moveaxis(np.tensordot(w_w, y, axes=(1, 1)), 0, 1)  # h x w x ...
    return y.astype(out_dtype, copy=False)
