"""Synthetic denoising data: training patches with generated noise, and the fixed-noise
validation set (the reference's ``SimulateTrain`` and ``SimulateTest``).

Training sample (one clean image folder list, patch size P, std values on the 0-1 scale):

1. a uniformly chosen image, read as uint8 RGB; with ``scale_range`` other than (1, 1) (not in the
   reference) it is shrunk by a factor U(low, high) (``datasets.rescale``); if a side is shorter
   than P the image is resized (bilinear) to at least P x P; a uniform P x P crop, scaled to
   [0, 1] (``to_float``);
2. a noise standard-deviation map sigma (P x P x 1):
   - 'niid' (the reference's training mode): a Gaussian bump with centre (U(0,P), U(0,P)) (row,
     column) and width U(P/4, 3P/4), min-max scaled to [down, up] where down, up are two
     U(0, 75/255) draws, ordered, and up is raised by 5/255;
   - 'iid': a constant map U(0, 75/255);
   - 'mix' (not in the reference): one U(0, 1) draw first; below ``iid_fraction`` an 'iid' map,
     else an 'niid' one, so that one model learns both kinds of noise;
3. noisy = clean + N(0, 1) * sigma, independent per pixel and channel, no clipping;
4. one of the 8 flip/rotation modes (``utils.augment``), uniform, applied to clean, noisy and
   sigma alike;
5. the variance target max(sigma^2, 1e-10).

Every draw comes from ``utils.seeding.sample_rng(seed, epoch, index)``: the sample at an index is
fixed by the run seed and the epoch, whichever process or worker builds it.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.augment import augment
from utils.image_io import read_image_uint8

from .epoch_sampled import EpochSampled
from .noise_maps import normalise_map, peaks, resize_map
from .rescale import NO_RESCALE, check_scale_range, random_rescale

SIGMA_MAX = 75 / 255.0
"""Largest drawn noise std (0-1 scale) of the training noise."""
SIGMA_LIFT = 5 / 255.0
"""Added to the upper std of a non-i.i.d. map, so that the map is never flat."""
VARIANCE_FLOOR = 1e-10
NOISE_TYPES = ("niid", "iid", "mix")


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], rounded exactly as ``skimage.img_as_float32`` (x * float32(1/255))."""
    return image.astype(np.float32) * np.float32(1 / 255)


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform ``size`` x ``size`` crop of an H x W x C image.

    An image with a side shorter than ``size`` is first resized (bilinear, OpenCV) to
    max(size, H) x max(size, W). Two draws: the top row, then the left column.
    """
    h, w = image.shape[:2]
    if h < size or w < size:
        h, w = max(size, h), max(size, w)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:
            image = image[:, :, None]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top:top + size, left:left + size]


def sigma_map_niid(size: int, rng: np.random.Generator, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """A non-i.i.d. noise std map: size x size x 1 float32 in [0, sigma_max + 5/255].

    Draws, in order: centre row U(0, size), centre column U(0, size), width U(size/4, 3 size/4),
    then two levels U(0, sigma_max) (the larger, plus 5/255, becomes the peak).
    """
    centre_row, centre_col = rng.uniform(0, size), rng.uniform(0, size)
    width = rng.uniform(size / 4, size / 4 * 3)
    rows, cols = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64),
                             indexing="ij")
    bump = np.exp(-((rows - centre_row) ** 2 + (cols - centre_col) ** 2) / (2 * width ** 2))
    bump /= bump.sum()
    up, down = rng.uniform(0, sigma_max), rng.uniform(0, sigma_max)
    if up < down:
        up, down = down, up
    up += SIGMA_LIFT
    sigma = down + (bump - bump.min()) / (bump.max() - bump.min()) * (up - down)
    return sigma.astype(np.float32)[:, :, None]


def sigma_map_iid(size: int, rng: np.random.Generator, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """A constant noise std map: size x size x 1 float32, one draw U(0, sigma_max)."""
    return np.full((size, size, 1), rng.uniform(0, sigma_max), dtype=np.float32)


class SyntheticDenoisingTrain(EpochSampled):
    """Training pairs with generated Gaussian noise (see the module docstring).

    image_paths: clean images (any format ``utils.image_io`` reads). length: samples per epoch.
    patch_size: P. seed: run seed. noise_type: 'niid', 'iid' or 'mix'; iid_fraction: the share of
    'iid' maps under 'mix' (0 to 1). scale_range: (low, high), 0.05 <= low <= high <= 1, the range of
    the random shrink factor of the source image ((1, 1): none, the reference).
    Item i: (noisy 3 x P x P, clean 3 x P x P, variance 1 x P x P), float32 tensors; clean in
    [0, 1], noisy unclipped, variance >= 1e-10. Call ``set_epoch`` before each epoch.
    """

    def __init__(self, image_paths: Sequence[str | os.PathLike], length: int, patch_size: int = 128,
                 seed: int = 0, noise_type: str = "niid", iid_fraction: float = 0.5,
                 scale_range: Sequence[float] = NO_RESCALE):
        if not image_paths:
            raise ValueError("SyntheticDenoisingTrain needs at least one image")
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
        if not 0 <= iid_fraction <= 1:
            raise ValueError(f"iid_fraction must be in [0, 1], got {iid_fraction}")
        super().__init__(length, seed)
        self.image_paths = [str(p) for p in image_paths]
        self.patch_size, self.noise_type, self.iid_fraction = patch_size, noise_type, iid_fraction
        self.scale_range = check_scale_range(scale_range)

    def __getitem__(self, index: int):
        rng = self.rng_for(index)
        path = self.image_paths[int(rng.integers(0, len(self.image_paths)))]
        image = random_rescale(read_image_uint8(path), self.scale_range, self.patch_size, rng)
        clean = to_float(random_crop(image, self.patch_size, rng))
        noise_type = self.noise_type
        if noise_type == "mix":
            noise_type = "iid" if rng.uniform() < self.iid_fraction else "niid"
        make_map = sigma_map_niid if noise_type == "niid" else sigma_map_iid
        sigma = make_map(self.patch_size, rng)
        noisy = clean + rng.standard_normal(clean.shape, dtype=np.float32) * sigma
        mode = int(rng.integers(0, 8))
        clean, noisy, sigma = (augment(x, mode) for x in (clean, noisy, sigma))
        variance = np.maximum(np.square(sigma), VARIANCE_FLOOR)
        return tuple(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
                     for x in (noisy, clean, variance))


class SyntheticDenoisingVal(Dataset):
    """Validation pairs with fixed spatially variant noise (the reference's ``SimulateTest``).

    One noise field ``default_rng(seed).standard_normal((Hmax, Wmax, 3), float32)`` (Hmax, Wmax:
    the largest height and width among the images) is shared by all images; the std map is
    MATLAB's ``peaks`` scaled to [10/255, 75/255] and stretched to each image (nearest).
    Item i: (noisy 3 x H x W, clean 3 x H x W) float32 tensors, noisy = clean + noise[:H, :W] *
    sigma, unclipped. The uint8 images are read once, at construction.
    """

    def __init__(self, image_paths: Sequence[str | os.PathLike], seed: int = 1000):
        if not image_paths:
            raise ValueError("SyntheticDenoisingVal needs at least one image")
        self.image_paths = [str(p) for p in image_paths]
        self.images = [read_image_uint8(p) for p in self.image_paths]
        h_max = max(im.shape[0] for im in self.images)
        w_max = max(im.shape[1] for im in self.images)
        self.noise = np.random.default_rng(seed).standard_normal((h_max, w_max, 3), dtype=np.float32)
        self.sigma_map = normalise_map(peaks(256)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        clean = to_float(self.images[index])
        h, w = clean.shape[:2]
        sigma = resize_map(self.sigma_map, w, h)
        noisy = clean + self.noise[:h, :w] * sigma[:, :, None]
        return tuple(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))) for x in (noisy, clean))
