"""Blind super-resolution data: random degraded training samples and the fixed validation set.

Training samples follow the reference's ``GeneralTrainFloder``: an HR crop is blurred by a random
anisotropic Gaussian kernel (true convolution, scipy's 'reflect' boundary, clipped), down-sampled
by ``sf`` and corrupted by Gaussian noise or, optionally, by Gaussian noise plus JPEG compression.
Unlike the reference, every random number of a sample comes from ``sample_rng(seed, epoch,
index)``, so a sample does not depend on the process, DataLoader worker or resume point that
produces it; the noise is NumPy ``standard_normal`` instead of ``torch.randn``. Draw order of
``SISRTrain[index]``:

1. image index ``integers(n_images)``; with ``scale_range`` other than (1, 1) the shrink factor
   ``uniform(*scale_range)`` (``datasets.rescale``; not in the reference); crop top
   ``integers(H - hr_size + 1)``, then crop left ``integers(W - hr_size + 1)``; augmentation mode
   ``integers(8)``;
2. the kernel, see ``sample_kernel``;
3. noise type ``integers(n_types)`` over ('gaussian',) or ('gaussian', 'jpeg') with ``add_jpeg``;
4. Gaussian: std ``uniform(*noise_level) / 255``, then the noise ``standard_normal(lr shape,
   float32)``; JPEG: quality (see ``sample_jpeg_quality``), std ``uniform(*noise_jpeg) / 255``,
   then the noise.

Validation follows ``GeneralTest``: a fixed isotropic kernel and noise fixed by a torch generator.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.augment import augment
from utils.config import check_pair
from utils.degradation import anisotropic_gaussian, blur_downsample_np, check_downsampler
from utils.image_io import list_images, read_image, to_uint8

from .epoch_sampled import EpochSampled
from .rescale import NO_RESCALE, check_scale_range, random_rescale

PathLike = Union[str, os.PathLike]

NOISE_TYPES = ("gaussian", "jpeg")
JPEG_QUALITY_RANGES = ((30, 35), (35, 40), (40, 45), (45, 60), (60, 70), (70, 80), (80, 95))
"""Inclusive JPEG quality ranges; a range is picked uniformly, then a quality inside it."""

VAL_KERNEL_VARIANCE = 1.6 ** 2
VAL_NOISE_SEED = 10000
VAL_NOISE_LEVEL = 2.55
VAL_JPEG_QUALITY = 40


def modcrop(im: np.ndarray, sf: int) -> np.ndarray:
    """Crop the bottom / right of an H x W [x C] array so that both sides are multiples of sf.

    Returns a view of size (H - H % sf) x (W - W % sf) [x C].
    """
    h, w = im.shape[:2]
    return im[:h - h % sf, :w - w % sf]


def sample_kernel(rng: np.random.Generator, sf: int, k_size: int = 21,
                  shift: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Draw a random training blur kernel (the reference's distribution).

    Draw order: ``l1 = uniform(0.2, sf)``; ``u = random()``; if ``u < 0.7``, ``l2 = uniform(l1,
    sf)``, else ``l2 = l1`` (isotropic, probability 0.3); ``theta = uniform(0, pi)``. The kernel is
    ``anisotropic_gaussian(k_size, sf, l1**2, l2**2, theta, shift)``, i.e. standard deviations
    l1 <= l2 along axes rotated by theta on the 'xy' grid.

    Returns (kernel k_size x k_size float64 summing to 1, kinfo (3,) float64 = (variance along
    columns, variance along rows, correlation)).
    """
    l1 = rng.uniform(0.2, sf)
    l2 = rng.uniform(l1, sf) if rng.random() < 0.7 else l1
    theta = rng.uniform(0.0, np.pi)
    return anisotropic_gaussian(k_size, sf, l1 ** 2, l2 ** 2, theta, shift)


def sample_jpeg_quality(rng: np.random.Generator) -> int:
    """Draw a JPEG quality in [30, 95]: a range of ``JPEG_QUALITY_RANGES`` by ``integers(7)``, then
    a quality inside it (both ends included) by ``integers(start, end + 1)``."""
    start, end = JPEG_QUALITY_RANGES[rng.integers(len(JPEG_QUALITY_RANGES))]
    return int(rng.integers(start, end + 1))


def jpeg_compress(im: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-encode and decode an RGB image with OpenCV.

    im: H x W x 3 float RGB in [0, 1] (clipped and rounded to uint8 first). Returns H x W x 3
    float32 RGB in [0, 1], multiples of 1/255.
    """
    im_bgr = np.ascontiguousarray(to_uint8(im)[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", im_bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"OpenCV failed to JPEG-encode an image of shape {im.shape}")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return decoded[:, :, ::-1].astype(np.float32) / 255.0


def _blur_downsample_f32(im_hr: np.ndarray, kernel: np.ndarray, sf: int, downsampler: str) -> np.ndarray:
    """``blur_downsample_np`` in float32, as the reference degrades its float32 training images."""
    return blur_downsample_np(im_hr.astype(np.float32, copy=False), kernel, sf,
                              downsampler).astype(np.float32, copy=False)


def _to_tensor(im: np.ndarray) -> torch.Tensor:
    """H x W x C array -> C x H x W float32 tensor owning its memory."""
    return torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1), dtype=np.float32))


def _image_files(folders: Sequence[PathLike]) -> list[Path]:
    """Every image of the folders, sorted by path string; raises if there is none."""
    files = sorted((p for folder in folders for p in list_images(folder)), key=str)
    if not files:
        raise ValueError(f"no image files in {', '.join(str(f) for f in folders)}")
    return files


class SISRTrain(EpochSampled):
    """Random blind-SR training samples (the reference's ``GeneralTrainFloder``).

    Args:
        hr_dirs: one folder or a list of folders of HR images (every image file, sorted by path).
        length: number of samples per epoch (the index only seeds the sample's generator).
        hr_size: side of the HR crop; every image must be at least this large.
        sf: scale factor; k_size, kernel_shift: see ``sample_kernel``.
        downsampler: 'bicubic' or 'direct' (case-insensitive).
        noise_level: range of the Gaussian noise std on the 0-255 scale.
        noise_jpeg: range of the std of the Gaussian noise added before JPEG, 0-255 scale.
        add_jpeg: draw the noise type from ('gaussian', 'jpeg') with equal probability.
        seed: run seed; with the epoch (``set_epoch``) and index it fixes every sample.
        scale_range: (low, high), 0.05 <= low <= high <= 1: each HR image is shrunk by a factor
            U(low, high) before the crop, never below hr_size; (1, 1): not at all (the reference).

    ``dataset[index]`` returns the tuple ``(im_hr, im_lr, im_blur, kinfo, nlevel)`` of float32
    tensors: im_hr 3 x hr x hr, im_lr 3 x h x w (degraded input), im_blur 3 x h x w (blurred and
    down-sampled, noise-free), h = w = ceil(hr / sf), all in [0, 1]; kinfo (3,) = (variance along
    columns, variance along rows, correlation) of the kernel, which is built on the 'xy' grid
    (``kinfo_to_kernel(kinfo, grid='xy')`` rebuilds it); nlevel 1 x 1 x 1 = the noise std on the
    [0, 1] scale (before JPEG compression for JPEG samples).
    """

    def __init__(self, hr_dirs: Union[PathLike, Sequence[PathLike]], length: int, hr_size: int,
                 sf: int, k_size: int = 21, kernel_shift: bool = False,
                 downsampler: str = "bicubic", noise_level: Sequence[float] = (0.01, 15),
                 noise_jpeg: Sequence[float] = (0.01, 10), add_jpeg: bool = False, seed: int = 0,
                 scale_range: Sequence[float] = NO_RESCALE):
        if isinstance(hr_dirs, (str, os.PathLike)):
            hr_dirs = [hr_dirs]
        super().__init__(length, seed)
        self.paths = _image_files(hr_dirs)
        self.hr_size = int(hr_size)
        self.sf = int(sf)
        self.k_size = int(k_size)
        self.kernel_shift = bool(kernel_shift)
        self.downsampler = check_downsampler(downsampler)
        self.noise_level = tuple(map(float, check_pair("noise_level", noise_level, minimum=0)))
        self.noise_jpeg = tuple(map(float, check_pair("noise_jpeg", noise_jpeg, minimum=0)))
        self.noise_types = NOISE_TYPES if add_jpeg else NOISE_TYPES[:1]
        self.scale_range = check_scale_range(scale_range)

    def _random_crop(self, rng: np.random.Generator) -> np.ndarray:
        path = self.paths[rng.integers(len(self.paths))]
        im = read_image(path)
        h, w = im.shape[:2]
        p = self.hr_size
        if h < p or w < p:
            raise ValueError(f"{path}: image of {h} x {w} is smaller than hr_size {p}")
        im = random_rescale(im, self.scale_range, p, rng)
        h, w = im.shape[:2]
        top = rng.integers(h - p + 1)
        left = rng.integers(w - p + 1)
        return augment(im[top:top + p, left:left + p], int(rng.integers(8)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        rng = self.rng_for(index)
        im_hr = self._random_crop(rng)
        kernel, kinfo = sample_kernel(rng, self.sf, self.k_size, self.kernel_shift)
        im_blur = _blur_downsample_f32(im_hr, kernel, self.sf, self.downsampler)
        noise_type = self.noise_types[rng.integers(len(self.noise_types))]
        if noise_type == "gaussian":
            std = rng.uniform(*self.noise_level) / 255.0
            noise = rng.standard_normal(im_blur.shape, dtype=np.float32)
            im_lr = np.clip(im_blur + noise * np.float32(std), 0.0, 1.0)
        else:
            quality = sample_jpeg_quality(rng)
            std = rng.uniform(*self.noise_jpeg) / 255.0
            noise = rng.standard_normal(im_blur.shape, dtype=np.float32)
            im_lr = jpeg_compress(np.clip(im_blur + noise * np.float32(std), 0.0, 1.0), quality)
        return (_to_tensor(im_hr), _to_tensor(im_lr), _to_tensor(im_blur),
                torch.tensor(kinfo, dtype=torch.float32),
                torch.full((1, 1, 1), std, dtype=torch.float32))


class SISRValidation(Dataset):
    """The fixed SR validation set (the reference's ``GeneralTest``, run on Set14).

    Every image file of ``hr_dir`` (sorted by path), gray replicated to 3 channels, mod-cropped to
    sf; blurred by the isotropic kernel ``anisotropic_gaussian(k_size, sf, 1.6**2, 1.6**2, 0,
    kernel_shift)``, clipped, down-sampled; plus fixed noise: one ``torch.randn([ceil(Hmax / sf),
    ceil(Wmax / sf), 3])`` from ``torch.Generator().manual_seed(seed)`` (Hmax, Wmax: the largest
    height and width over the folder before mod-cropping), cropped to each LR image's top-left
    corner, times 2.55 / 255, then clip to [0, 1]. noise 'jpeg' (case-insensitive) compresses that
    result with quality 40.

    ``dataset[index]`` returns ``(im_hr 3 x H x W, im_lr 3 x H/sf x W/sf, kinfo (3,))``, float32
    tensors, images in [0, 1].
    """

    def __init__(self, hr_dir: PathLike, sf: int, k_size: int = 21, downsampler: str = "bicubic",
                 noise: str = "gaussian", kernel_shift: bool = False, seed: int = VAL_NOISE_SEED):
        self.noise = noise.lower()
        if self.noise not in NOISE_TYPES:
            raise ValueError(f"noise must be 'gaussian' or 'jpeg', got {noise!r}")
        self.paths = _image_files([hr_dir])
        self.sf = int(sf)
        self.downsampler = check_downsampler(downsampler)
        self.kernel, self.kinfo = anisotropic_gaussian(k_size, self.sf, VAL_KERNEL_VARIANCE,
                                                       VAL_KERNEL_VARIANCE, 0.0, kernel_shift)
        shapes = [read_image(p).shape for p in self.paths]
        h_max = max(s[0] for s in shapes)
        w_max = max(s[1] for s in shapes)
        generator = torch.Generator().manual_seed(seed)
        self.fixed_noise = torch.randn([math.ceil(h_max / self.sf), math.ceil(w_max / self.sf), 3],
                                       generator=generator, dtype=torch.float32).numpy()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        im_hr = modcrop(read_image(self.paths[index]), self.sf)
        im_blur = _blur_downsample_f32(im_hr, self.kernel, self.sf, self.downsampler)
        h, w = im_blur.shape[:2]
        noise = self.fixed_noise[:h, :w] * np.float32(VAL_NOISE_LEVEL / 255.0)
        im_lr = np.clip(im_blur + noise, 0.0, 1.0)
        if self.noise == "jpeg":
            im_lr = jpeg_compress(im_lr, VAL_JPEG_QUALITY)
        return _to_tensor(im_hr), _to_tensor(im_lr), torch.tensor(self.kinfo, dtype=torch.float32)
