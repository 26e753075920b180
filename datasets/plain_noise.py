"""Plain signal-dependent noise: Poisson-Gaussian noise added per pixel and per channel to an sRGB
image, with no camera pipeline (no unprocessing, mosaic, demosaicking or tone curve).

A clean image x (H x W x 3 in [0, 1]) becomes ``x + sqrt(shot * x + read) * n`` with n i.i.d.
standard normal per sample (the Gaussian approximation of Poisson shot noise plus Gaussian read
noise), clipped to [0, 1] and rounded to 8 bits. Unlike camera noise
(``datasets.camera_noise``) it is white: uncorrelated across pixels and colour channels. The
real-noise trainer mixes it into its camera-noise samples (config key ``plain_noise_fraction``) so
that the real-noise denoiser also removes such noise; see docs/strength.md.

Levels: log(shot) ~ U(log 1e-4, log 1.6e-2), log(read) ~ U(log 1e-6, log 2.5e-3) (on the [0, 1]
scale: up to about 25/255 std at mid-grey from shot noise and 13/255 from read noise).
"""
from __future__ import annotations

import numpy as np

from utils.image_io import to_uint8

from .denoising_syn import to_float

PLAIN_SHOT_RANGE = (1e-4, 1.6e-2)
PLAIN_READ_RANGE = (1e-6, 2.5e-3)


def random_plain_levels(rng: np.random.Generator) -> tuple[float, float]:
    """(shot, read), each log-uniform in ``PLAIN_SHOT_RANGE`` / ``PLAIN_READ_RANGE``; two draws, in
    that order."""
    shot = np.exp(rng.uniform(*np.log(PLAIN_SHOT_RANGE)))
    read = np.exp(rng.uniform(*np.log(PLAIN_READ_RANGE)))
    return float(shot), float(read)


def add_plain_noise(clean: np.ndarray, shot: float, read: float, rng: np.random.Generator) -> np.ndarray:
    """``clean`` (H x W x C float in [0, 1]) plus N(0, shot * clean + read) per element, clipped to
    [0, 1] and rounded to 8 bits: H x W x C float32, multiples of 1/255. One ``standard_normal`` draw
    of ``clean.shape``. Raises ValueError for a negative level."""
    if shot < 0 or read < 0:
        raise ValueError(f"noise levels must be non-negative, got shot {shot:g}, read {read:g}")
    clean = clean.astype(np.float32)
    std = np.sqrt(np.float32(shot) * np.clip(clean, 0.0, 1.0) + np.float32(read))
    noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * std
    return to_float(to_uint8(np.clip(noisy, 0.0, 1.0)))


def synthesize_plain_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plain Poisson-Gaussian noise at random levels (``random_plain_levels``, then the noise):
    H x W x 3 float in [0, 1] -> H x W x 3 float32 in [0, 1], multiples of 1/255."""
    shot, read = random_plain_levels(rng)
    return add_plain_noise(clean, shot, read, rng)
