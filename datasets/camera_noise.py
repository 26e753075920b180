"""Camera-noise synthesis for real-noise denoising without SIDD (Brooks et al., "Unprocessing
Images for Learned Raw Denoising", CVPR 2019).

A clean sRGB image (H x W x 3 float32 in [0, 1], H and W even) is turned into a camera-like noisy
one in five steps; every random draw comes from one ``np.random.Generator``:

1. ``unprocess``: inverse smoothstep tone curve, inverse gamma 2.2, sRGB -> camera RGB with a
   sampled colour matrix, inverse white balance and digital gain (highlight-preserving), giving
   linear camera RGB, H x W x 3 (unclipped: a saturated sRGB colour may map slightly outside
   [0, 1]);
2. ``mosaic``: RGGB Bayer sampling to an H/2 x W/2 x 4 raw with planes (R, Gr, Gb, B): R at
   (even row, even column), Gr at (even, odd), Gb at (odd, even), B at (odd, odd);
3. ``add_shot_read_noise``: heteroscedastic noise per raw pixel, variance shot * x + read;
4. ``demosaic`` (bilinear) of the raw noise only, added to the linear image: the signal keeps
   its full resolution, so a noise-free pass returns the clean image and a training pair differs
   by noise alone (as SIDD pairs do, whose ground truth went through the same camera pipeline),
   while the noise is spatially and chromatically correlated as after a camera's demosaicking;
5. ``process``: white balance and gain (undoing the highlight fade exactly, so that
   ``process(unprocess(x)) == x`` up to float error), camera RGB -> sRGB, gamma, clip to [0, 1],
   smoothstep; then rounding to 8 bits or, optionally, JPEG compression.

Sampled parameters (``sample_params``): the colour matrix is a Dirichlet(1, 1, 1, 1) convex
combination of ``XYZ_TO_CAMERA`` times ``SRGB_TO_XYZ``, rows normalised to sum 1 (so grey stays
grey); red gain U(1.9, 2.4), blue gain U(1.5, 1.9), overall gain 1 / clip(N(0.8, 0.1), 0.5, 1);
log(shot) ~ U(log 1e-4, log 1.2e-2), log(read) = 2.18 log(shot) + 1.2 + N(0, 0.26).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.augment import augment
from utils.config import check_pair
from utils.degradation import noise_prior
from utils.image_io import read_image_uint8, to_uint8

from .denoising_syn import random_crop, to_float
from .rescale import NO_RESCALE, check_scale_range, random_rescale
from .epoch_sampled import EpochSampled
from .plain_noise import synthesize_plain_noise
from .sisr import jpeg_compress

XYZ_TO_CAMERA = np.array([
    [[4716, 603, -830], [-7798, 15474, 2480], [-1496, 1937, 6651]],     # Canon EOS 5D Mark II
    [[6347, -479, -972], [-8297, 15954, 2480], [-1968, 2131, 7649]],    # Canon EOS 5D
    [[8139, -2171, -663], [-8747, 16541, 2295], [-1925, 2008, 8093]],   # Nikon D700
    [[5209, -1072, -397], [-8845, 16120, 2919], [-1618, 1803, 8654]],   # Sony DSLR-A900
], dtype=np.float64) / 10000
"""XYZ (D65) -> camera RGB matrices: the Adobe DNG ColorMatrix values tabulated by dcraw."""
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
"""Linear sRGB -> XYZ under D65 (IEC 61966-2-1)."""
RED_GAIN, BLUE_GAIN = (1.9, 2.4), (1.5, 1.9)
INVERSE_GAIN_MEAN, INVERSE_GAIN_STD, INVERSE_GAIN_CLIP = 0.8, 0.1, (0.5, 1.0)
SHOT_RANGE = (1e-4, 1.2e-2)
READ_SLOPE, READ_INTERCEPT, READ_STD = 2.18, 1.2, 0.26
GAMMA, GAMMA_EPS = 2.2, 1e-8
HIGHLIGHT = 0.9
"""Mean linear intensity above which the inverse white balance fades to 1 (Brooks et al. 3.2)."""


class CameraParams(NamedTuple):
    """One sampled camera: rgb2cam 3 x 3 float32 (linear sRGB -> camera RGB, rows sum 1), white
    balance gains (red, blue), overall digital gain, noise levels (shot, read: variance
    shot * x + read on the 0-1 raw scale) and the JPEG quality (None: 8-bit PNG-like output)."""
    rgb2cam: np.ndarray
    red_gain: float
    blue_gain: float
    rgb_gain: float
    shot: float
    read: float
    jpeg_quality: Optional[int] = None


def random_rgb2cam(rng: np.random.Generator) -> np.ndarray:
    """A camera-like linear sRGB -> camera RGB matrix, 3 x 3 float32 with rows summing to 1.

    One draw: Dirichlet weights over ``XYZ_TO_CAMERA``; the weighted matrix times ``SRGB_TO_XYZ``.
    """
    weights = rng.dirichlet(np.ones(len(XYZ_TO_CAMERA)))
    rgb2cam = np.tensordot(weights, XYZ_TO_CAMERA, axes=1) @ SRGB_TO_XYZ
    return (rgb2cam / rgb2cam.sum(axis=1, keepdims=True)).astype(np.float32)


def random_noise_levels(rng: np.random.Generator) -> tuple[float, float]:
    """(shot, read) on the log-linear camera line: log(shot) ~ U(log 1e-4, log 1.2e-2), then
    log(read) = 2.18 log(shot) + 1.2 + N(0, 0.26). Two draws, in that order."""
    log_shot = rng.uniform(*np.log(SHOT_RANGE))
    log_read = READ_SLOPE * log_shot + READ_INTERCEPT + rng.normal(0.0, READ_STD)
    return float(np.exp(log_shot)), float(np.exp(log_read))


def sample_params(rng: np.random.Generator) -> CameraParams:
    """Draw a camera (see the module docstring), in order: colour matrix, red gain, blue gain,
    overall gain, noise levels. ``jpeg_quality`` is left None."""
    rgb2cam = random_rgb2cam(rng)
    red_gain, blue_gain = rng.uniform(*RED_GAIN), rng.uniform(*BLUE_GAIN)
    inverse_gain = np.clip(rng.normal(INVERSE_GAIN_MEAN, INVERSE_GAIN_STD), *INVERSE_GAIN_CLIP)
    shot, read = random_noise_levels(rng)
    return CameraParams(rgb2cam, float(red_gain), float(blue_gain), float(1 / inverse_gain), shot, read)


def _gains(params: CameraParams) -> np.ndarray:
    """The forward white balance times digital gain per channel (R, G, B), float32 (3,)."""
    return np.array([params.red_gain, 1.0, params.blue_gain], np.float32) * np.float32(params.rgb_gain)


def _safe_inverse_gains(mean: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Brooks et al.'s highlight-preserving inverse gains, ... x 3 for pixel means ``mean`` (...):
    max(f + (1 - f) inverse, inverse), f = (max(mean - 0.9, 0) / 0.1)^2."""
    fade = np.square(np.maximum(mean - HIGHLIGHT, 0.0) / (1.0 - HIGHLIGHT))[..., None]
    return np.maximum(fade + (1.0 - fade) * inverse, inverse)


def _apply_gains(raw: np.ndarray, params: CameraParams) -> np.ndarray:
    """Undo the safe inverse gains of ``unprocess`` on H x W x 3 linear camera RGB (float32 out).

    A pixel whose plain-gained mean is at most 0.9 had no fade: it gets the plain gains. For the
    others the pre-inversion mean m solves m = mean_c(raw_c / s_c(m)) with s the safe inverse
    gains; it lies in [0.9, plain-gained mean] and is found by 40 bisection steps.
    """
    gains = _gains(params)
    out = raw.astype(np.float32) * gains
    plain_mean = out.mean(axis=2)
    bright = plain_mean > HIGHLIGHT
    if bright.any():
        values, inverse = raw[bright].astype(np.float64), 1.0 / gains.astype(np.float64)
        low, high = np.full(len(values), HIGHLIGHT), plain_mean[bright].astype(np.float64)
        for _ in range(40):
            mid = (low + high) / 2
            above = (values / _safe_inverse_gains(mid, inverse)).mean(axis=1) > mid
            low, high = np.where(above, mid, low), np.where(above, high, mid)
        out[bright] = values / _safe_inverse_gains((low + high) / 2, inverse)
    return out


def unprocess(image: np.ndarray, params: CameraParams) -> np.ndarray:
    """sRGB H x W x 3 in [0, 1] -> linear camera RGB H x W x 3 float32 (no mosaic, no noise).

    Inverse smoothstep, inverse gamma max(x, 1e-8)^2.2, ``rgb2cam``, then the inverse gains
    faded to 1 for bright pixels (mean above 0.9, quadratically) so that highlights stay
    saturated in raw: white maps to raw (1, 1, 1).
    """
    x = np.clip(image.astype(np.float32), 0.0, 1.0)
    x = 0.5 - np.sin(np.arcsin(1.0 - 2.0 * x) / 3.0)
    x = np.maximum(x, GAMMA_EPS) ** np.float32(GAMMA)
    x = x @ params.rgb2cam.T
    return x * _safe_inverse_gains(x.mean(axis=2), 1.0 / _gains(params))


def process(raw: np.ndarray, params: CameraParams) -> np.ndarray:
    """Linear camera RGB H x W x 3 -> sRGB H x W x 3 float32 in [0, 1]; the inverse of ``unprocess``.

    Gains (with the highlight fade undone, ``_apply_gains``), inverse of ``rgb2cam``, gamma
    max(x, 1e-8)^(1 / 2.2), clip to [0, 1], smoothstep 3x^2 - 2x^3.
    """
    x = _apply_gains(raw, params) @ np.linalg.inv(params.rgb2cam).T.astype(np.float32)
    x = np.clip(np.maximum(x, GAMMA_EPS) ** np.float32(1 / GAMMA), 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def mosaic(raw: np.ndarray) -> np.ndarray:
    """H x W x 3 (H, W even) -> RGGB Bayer raw H/2 x W/2 x 4 with planes (R, Gr, Gb, B)."""
    return np.stack([raw[0::2, 0::2, 0], raw[0::2, 1::2, 1], raw[1::2, 0::2, 1], raw[1::2, 1::2, 2]],
                    axis=2)


_KERNEL_RB = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 4
_KERNEL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4


def demosaic(bayer: np.ndarray) -> np.ndarray:
    """Bilinear demosaic of an RGGB raw h x w x 4 (``mosaic``'s layout) -> 2h x 2w x 3 float32.

    Each channel's samples are spread by a 3 x 3 bilinear kernel; the border is mirrored without
    repeating the edge, which keeps the Bayer phase, so a constant raw gives a constant image.
    """
    h, w = bayer.shape[:2]
    planes = np.zeros((3, 2 * h, 2 * w), np.float32)
    planes[0, 0::2, 0::2] = bayer[:, :, 0]
    planes[1, 0::2, 1::2] = bayer[:, :, 1]
    planes[1, 1::2, 0::2] = bayer[:, :, 2]
    planes[2, 1::2, 1::2] = bayer[:, :, 3]
    return np.stack([cv2.filter2D(plane, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
                     for plane, kernel in zip(planes, (_KERNEL_RB, _KERNEL_G, _KERNEL_RB))], axis=2)


def add_shot_read_noise(raw: np.ndarray, shot: float, read: float,
                        rng: np.random.Generator) -> np.ndarray:
    """raw + N(0, shot * max(raw, 0) + read), independent per element; any shape, float32 out.

    One ``standard_normal`` draw of ``raw.shape`` (also when shot = read = 0, which returns raw).
    """
    std = np.sqrt(np.float32(shot) * np.maximum(raw, 0.0) + np.float32(read)).astype(np.float32)
    return (raw + rng.standard_normal(raw.shape, dtype=np.float32) * std).astype(np.float32)


def _check_quality(jpeg_quality: Optional[Sequence[int]]) -> None:
    """Raise ValueError unless ``jpeg_quality`` is None or an inclusive (low, high) in 1..100."""
    if jpeg_quality is not None:
        check_pair("jpeg_quality", jpeg_quality, 1, 100)


def synthesize_camera_noise(clean: np.ndarray, rng: np.random.Generator,
                            jpeg_quality: Optional[Sequence[int]] = None
                            ) -> tuple[np.ndarray, CameraParams]:
    """Camera-like noisy version of a clean sRGB image (steps 1-5 of the module docstring).

    clean: H x W x 3 float in [0, 1], H and W even. jpeg_quality: None (round the output to
    8 bits) or an inclusive (low, high) range from which the JPEG quality is drawn.
    Draws, in order: ``sample_params``, the raw noise, then the quality; the JPEG version of a
    sample is therefore the compressed 8-bit one. Returns (noisy H x W x 3 float32 in [0, 1],
    multiples of 1/255; the sampled ``CameraParams``).
    """
    _check_quality(jpeg_quality)
    if clean.ndim != 3 or clean.shape[2] != 3 or clean.shape[0] % 2 or clean.shape[1] % 2:
        raise ValueError(f"expected an H x W x 3 image with even H and W, got shape {clean.shape}")
    params = sample_params(rng)
    raw = unprocess(clean, params)
    bayer = mosaic(raw)
    noise = add_shot_read_noise(bayer, params.shot, params.read, rng) - bayer
    noisy = process(raw + demosaic(noise), params)
    if jpeg_quality is None:
        return to_float(to_uint8(noisy)), params
    quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
    return jpeg_compress(noisy, quality), params._replace(jpeg_quality=quality)


def camera_noise_with_std(clean: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthesized camera noise on an H x W x 3 uint8 image (even sides; see
    ``synthesize_camera_noise``, no JPEG). Returns the noisy float32 image in [0, 1] and the true
    noise std, H x W x 3 in 0-255 units, measured as the training prior does: the squared
    difference filtered per channel by a 7 x 7 Gaussian window (``utils.degradation.noise_prior``)."""
    clean = to_float(clean)
    noisy, _ = synthesize_camera_noise(clean, rng)
    chw = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)))[None] for im in (noisy, clean)]
    variance = noise_prior(*chw, 7)[0].numpy().transpose(1, 2, 0)
    return noisy, np.sqrt(variance) * 255.0


class CameraNoiseTrain(EpochSampled):
    """Training pairs of clean crops and their synthesized camera noise (``SIDDPatchTrain``'s
    contract, so MixUp and the windowed variance prior apply unchanged).

    image_paths: clean images (any format ``utils.image_io`` reads). length: samples per epoch.
    pch_size: crop size P (even, >= 8). seed: run seed. jpeg_quality: None or an inclusive
    (low, high) quality range (see ``synthesize_camera_noise``). scale_range: (low, high) range of
    the random shrink factor of the clean image before the crop (``datasets.rescale``; (1, 1): none).
    Sample ``index`` draws only from ``sample_rng(seed, epoch, index)``, in order: the image, the
    shrink factor (unless scale_range is (1, 1)), the crop (``random_crop``), the flip / rotation
    mode (applied to the clean crop, so the Bayer phase of the synthesized noise is always RGGB),
    then ``synthesize_camera_noise``. plain_fraction: with p > 0, each sample first draws u ~ U(0, 1)
    after the mode, and when u < p gets plain Poisson-Gaussian noise instead
    (``datasets.plain_noise.synthesize_plain_noise``, no JPEG); p = 0 (the default) draws nothing more.
    Item: (noisy, clean), two 3 x P x P float32 tensors in [0, 1]. Call ``set_epoch`` per epoch.
    """

    def __init__(self, image_paths: Sequence[str | os.PathLike], length: int, pch_size: int = 128,
                 seed: int = 0, jpeg_quality: Optional[Sequence[int]] = None,
                 scale_range: Sequence[float] = NO_RESCALE, plain_fraction: float = 0.0):
        if not image_paths:
            raise ValueError("CameraNoiseTrain needs at least one image")
        if not 0.0 <= plain_fraction <= 1.0:
            raise ValueError(f"plain_fraction must be in [0, 1], got {plain_fraction:g}")
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        if pch_size < 8 or pch_size % 2:
            raise ValueError(f"pch_size must be even and at least 8 (Bayer 2 x 2 cells), got {pch_size}")
        _check_quality(jpeg_quality)
        super().__init__(length, seed)
        self.image_paths = [str(p) for p in image_paths]
        self.pch_size, self.jpeg_quality, self.plain_fraction = pch_size, jpeg_quality, plain_fraction
        self.scale_range = check_scale_range(scale_range)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy, clean): two 3 x P x P float32 tensors in [0, 1]."""
        rng = self.rng_for(index)
        path = self.image_paths[int(rng.integers(len(self.image_paths)))]
        image = random_rescale(read_image_uint8(path), self.scale_range, self.pch_size, rng)
        clean = to_float(random_crop(image, self.pch_size, rng))
        clean = augment(clean, int(rng.integers(8)))
        if self.plain_fraction > 0 and rng.random() < self.plain_fraction:
            noisy = synthesize_plain_noise(clean, rng)
        else:
            noisy, _ = synthesize_camera_noise(clean, rng, self.jpeg_quality)
        return tuple(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))) for x in (noisy, clean))


class CameraNoiseVal(Dataset):
    """Fixed test pairs: each clean image with its own synthesized camera noise.

    image_paths: clean images; each is read as uint8 RGB and cropped to even height and width
    (the Bayer cells). Image i draws from ``np.random.default_rng([seed, i])`` only (no JPEG), so
    its noise does not depend on the other images or on the order of access. The uint8 images
    are read once, at construction.
    Item i: (noisy, clean), two 3 x H x W float32 tensors in [0, 1].
    """

    def __init__(self, image_paths: Sequence[str | os.PathLike], seed: int = 2024):
        if not image_paths:
            raise ValueError("CameraNoiseVal needs at least one image")
        self.image_paths = [str(p) for p in image_paths]
        self.images = []
        for path in self.image_paths:
            image = read_image_uint8(path)
            self.images.append(image[:image.shape[0] // 2 * 2, :image.shape[1] // 2 * 2])
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noisy, clean): two 3 x H x W float32 tensors in [0, 1]."""
        clean = to_float(self.images[index])
        noisy, _ = synthesize_camera_noise(clean, np.random.default_rng([self.seed, index]))
        return tuple(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))) for x in (noisy, clean))
