"""The three spatially variant noise-level maps of the synthetic (non-i.i.d.) denoising test.

Each map is a 256 x 256 surface that is min-max scaled to standard deviations in
[10/255, 75/255] (``normalise_map``) and stretched to every test image with OpenCV's
``INTER_NEAREST_EXACT`` (``resize_map``). The arithmetic (dtypes and operation order) follows
the reference code so that the noisy test images come out bit-identical.
"""
from __future__ import annotations

import cv2
import numpy as np

SIGMA_MIN = 10 / 255.0
SIGMA_MAX = 75 / 255.0


def peaks(n: int = 256) -> np.ndarray:
    """MATLAB's ``peaks`` surface sampled on an n x n grid over [-3, 3]^2.

    x runs along columns, y along rows. Returns an n x n float64 array (values about -6.5..8.1).
    """
    axis = np.linspace(-3, 3, n)
    x, y = np.meshgrid(axis, axis)
    hill = 3 * (1 - x) ** 2 * np.exp(-x ** 2 - (y + 1) ** 2)
    ridge = 10 * (x / 5.0 - x ** 3 - y ** 5) * np.exp(-x ** 2 - y ** 2)
    dip = 1 / 3.0 * np.exp(-(x + 1) ** 2 - y ** 2)
    return hill - ridge - dip


def sincos_kernel(n: int = 256) -> np.ndarray:
    """The surface sin(x) + cos(y) on an n x n grid.

    x = linspace(1, 10, n) along columns, y = linspace(1, 20, n) along rows.
    Returns an n x n float64 array in [-2, 2].
    """
    x, y = np.meshgrid(np.linspace(1, 10, n), np.linspace(1, 20, n))
    return np.sin(x) + np.cos(y)


def gauss_kernel_mix(h: int = 256, w: int = 256, rng: np.random.Generator | None = None,
                     cell: int = 32) -> np.ndarray:
    """Mean of isotropic 2-D Gaussian densities, one per ``cell`` x ``cell`` block of an h x w grid.

    Draws from ``rng`` (a fresh unseeded generator if None), in this order: the column centres
    of all components (U(0, cell) inside each block, row-major over blocks), then the row
    centres, then the standard deviations U(cell/2, cell). Returns an h x w float32 array of
    positive values.
    """
    rng = np.random.default_rng() if rng is None else rng
    rows, cols = h // cell, w // cell
    n_comp = rows * cols
    centre_x = rng.uniform(low=0, high=cell, size=(rows, cols)) + np.arange(cols) * cell
    centre_x = centre_x.reshape(1, 1, n_comp).astype(np.float32)
    centre_y = rng.uniform(low=0, high=cell, size=(rows, cols)) + np.arange(rows)[:, None] * cell
    centre_y = centre_y.reshape(1, 1, n_comp).astype(np.float32)
    std = rng.uniform(low=cell / 2, high=cell, size=(1, 1, n_comp)).astype(np.float32)
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    x = x[:, :, None].astype(np.float32)
    y = y[:, :, None].astype(np.float32)
    two_var = 2 * std ** 2
    norm = 1.0 / (2 * np.pi * std ** 2)
    dens = norm * np.exp((-(x - centre_x) ** 2 - (y - centre_y) ** 2) / two_var)  # h x w x K
    return dens.sum(axis=2) / n_comp


def normalise_map(level: np.ndarray, low: float = SIGMA_MIN, high: float = SIGMA_MAX) -> np.ndarray:
    """Min-max scale a map to [low, high] (defaults 10/255 and 75/255), keeping its float dtype.

    ``level``: H x W float array, not constant. Returns an H x W array of the same dtype.
    """
    span = level.max() - level.min()
    return low + (level - level.min()) / span * (high - low)


def resize_map(level: np.ndarray, width: int, height: int) -> np.ndarray:
    """Stretch a map to ``height`` x ``width`` with nearest-neighbour (``INTER_NEAREST_EXACT``).

    ``level``: h x w float array. Returns a ``height`` x ``width`` float32 array with the same
    values.
    """
    return cv2.resize(level, (width, height), interpolation=cv2.INTER_NEAREST_EXACT).astype(np.float32)


def niid_noise_maps(rng: np.random.Generator) -> list[np.ndarray]:
    """The three normalised 256 x 256 maps of the non-i.i.d. test, in case order 1..3.

    peaks, sin-cos, Gaussian mixture (the mixture draws from ``rng``; build these before any
    noise is drawn). Returns three 256 x 256 arrays in [10/255, 75/255] (float64, float64,
    float32, as the reference computes them).
    """
    surfaces = [peaks(256), sincos_kernel(256), gauss_kernel_mix(256, 256, rng)]
    return [normalise_map(s) for s in surfaces]
