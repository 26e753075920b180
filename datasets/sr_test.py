"""Inputs of the blind-SR test protocol, degraded as the reference does.

Each HR test image (read as uint8 RGB, gray as 3 channels) is mod-cropped to the scale factor,
blurred by a kernel, down-sampled by MATLAB bicubic and given Gaussian noise drawn from
``default_rng(1234)`` (``utils.degradation.degrade_sr``); the protocol runs dataset by dataset,
kernel by kernel (the 7 test kernels), image by image.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from utils.degradation import KINFO_NAMES, SR_TEST_KERNELS, degrade_sr, sr_test_kernels
from utils.image_io import list_images, read_image_uint8


SEED = 1234
K_SIZE = 21
KERNELS = [{"kernel": str(number), "a1": a1, "a2": a2, "theta_over_pi": t}
           for number, (a1, a2, t) in enumerate(SR_TEST_KERNELS, start=1)]
"""The 7 test kernels as the results record them: label '1'..'7', the standard deviations along the
principal axes over sf (a1, a2) and the angle over pi."""


def noise_tag(level: float) -> str:
    """The reference's noise label in result file names: '0' for 0, else the value without its dot
    (0.1 -> '01', 2.55 -> '255', 7.65 -> '765')."""
    return "0" if level == 0 else str(level).replace(".", "")


def degrade_test_image(gt: np.ndarray, kernel: np.ndarray, sf: int,
                       noise_level: float) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's degradation of one HR image ``gt`` (H x W x 3 uint8): returns (the mod-cropped
    HR image, uint8; the LR image, float32 in [0, 1], (H // sf) x (W // sf) x 3). ``noise_level``: the
    noise std on the 0-255 scale."""
    from .sisr import modcrop  # the training set's module loads when a test image is degraded

    gt = modcrop(gt, sf)
    return gt, degrade_sr(gt.astype(np.float32) / 255, kernel, sf, noise_level, seed=SEED)


def sr_test_pairs(dataset_dirs: Mapping[str, Path], sf: int,
                  noise_level: float) -> Iterator[tuple[str, int, Path, np.ndarray, np.ndarray]]:
    """Yield (dataset, kernel number 1..7, image path, HR uint8, LR float32) in the protocol's order
    (see the module docstring) for the test sets ``dataset_dirs`` (name -> folder)."""
    kernels, _ = sr_test_kernels(sf, K_SIZE)
    for dataset, folder in dataset_dirs.items():
        paths = list_images(folder)
        for number, kernel in enumerate(kernels, start=1):
            for path in paths:
                yield (dataset, number, path, *degrade_test_image(read_image_uint8(path), kernel, sf, noise_level))


def with_kernel_errors(rows: list[dict], sf: int) -> list[dict]:
    """The protocol's rows (``Runner.evaluate``: 'kernel' label and the K-Net's estimate var1, var2,
    rho) with the absolute errors of that estimate against the test kernel's own kinfo added as
    var1_error, var2_error (HR pixels^2) and rho_error."""
    _, truths = sr_test_kernels(sf, K_SIZE)
    return [{**row, **{f"{name}_error": abs(row[name] - float(truth))
                       for name, truth in zip(KINFO_NAMES, truths[int(row["kernel"]) - 1])}} for row in rows]
