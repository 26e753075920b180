"""Noisy/clean test pairs of the synthetic denoising benchmark (Tables 1 and 2 of the paper).

One ``np.random.default_rng(1000)`` drives a whole run. For ``'niid'`` the three variance
maps are built first (only the Gaussian mixture draws from the generator); then, dataset by
dataset, case by case, image by image, one ``standard_normal(H x W x 3)`` draw per image is
scaled by the case's noise level and added to the clean image, without clipping.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Union

import numpy as np

from utils.image_io import list_images, read_image_uint8

from .noise_maps import niid_noise_maps, resize_map

SEED = 1000
IID_SIGMAS = (15, 25, 50)
"""Noise standard deviations (0-255 scale) of the i.i.d. cases 1, 2, 3."""

NOISE_TYPES = ("niid", "iid")

PathLike = Union[str, os.PathLike]
Pair = tuple[str, int, str, np.ndarray, np.ndarray]


def _image_lists(dataset_dirs: Mapping[str, PathLike] | Iterable[PathLike]) -> dict[str, list[Path]]:
    """Map each dataset name to its image files sorted by path string; reject empty folders."""
    if isinstance(dataset_dirs, (str, os.PathLike)):
        raise TypeError("dataset_dirs must be a mapping name -> folder or a list of folders")
    if not isinstance(dataset_dirs, Mapping):
        dataset_dirs = {Path(d).name: d for d in dataset_dirs}
    lists = {}
    for name, folder in dataset_dirs.items():
        files = list_images(folder)
        if not files:
            raise ValueError(f"{folder}: no image files in test set {name!r}")
        lists[name] = files
    return lists


def _to_float32(im_gt: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] as ``skimage.img_as_float32`` computes it (times float32(1/255))."""
    return np.multiply(im_gt, 1.0 / 255, dtype=np.float32)


def synthetic_test_pairs(noise_type: str,
                         dataset_dirs: Mapping[str, PathLike] | Iterable[PathLike]) -> Iterator[Pair]:
    """Yield the synthetic denoising test pairs in the reference's exact draw order.

    ``noise_type``: ``'niid'`` (cases 1..3 = peaks, sin-cos and Gaussian-mixture variance maps
    scaled to [10/255, 75/255]) or ``'iid'`` (cases 1..3 = sigma 15, 25, 50 on the 0-255 scale,
    see ``IID_SIGMAS``). ``dataset_dirs``: a mapping name -> folder, visited in its order, or a
    list of folders named by their basenames. Every image file of a folder is used, sorted by
    path string (``10.tif`` before ``2.tif``); gray images count as 3-channel (replicated).

    Yields ``(dataset, case, name, im_gt, im_noisy)``: ``case`` an int in 1..3, ``name`` the file
    stem, ``im_gt`` H x W x 3 uint8 in [0, 255], ``im_noisy`` H x W x 3 float32, the clean image
    in [0, 1] plus Gaussian noise, unclipped. Arguments are checked (and folders listed) on call.
    """
    noise_type = noise_type.lower()
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    return _pairs(noise_type, _image_lists(dataset_dirs))


def _pairs(noise_type: str, image_lists: dict[str, list[Path]]) -> Iterator[Pair]:
    """The generator behind ``synthetic_test_pairs`` (arguments already checked)."""
    rng = np.random.default_rng(SEED)
    if noise_type == "niid":
        levels = niid_noise_maps(rng)
    else:
        levels = [np.float32(s / 255.0) for s in IID_SIGMAS]
    for dataset, files in image_lists.items():
        images = [(path.stem, read_image_uint8(path)) for path in files]
        for case, level in enumerate(levels, start=1):
            for name, im_gt in images:
                h, w = im_gt.shape[:2]
                sigma = resize_map(level, w, h)[:, :, None] if noise_type == "niid" else level
                noise = (rng.standard_normal(size=im_gt.shape) * sigma).astype(np.float32)
                yield dataset, case, name, im_gt.copy(), _to_float32(im_gt) + noise
