"""Scale augmentation of training images: each sample sees its source image shrunk by a random
factor before the crop, so that 108 photographs yield more distinct content per patch (the
multi-scale patches of DnCNN's training data, drawn continuously). Not in the reference: its
datasets crop the images at their own size, which ``scale_range = (1, 1)`` keeps, with no draw.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from utils.config import Key, check_pair

NO_RESCALE = (1.0, 1.0)
SMALLEST_FACTOR = 0.05
SCALE_RANGE_KEY = Key("floats", list(NO_RESCALE), "[low, high]: shrink each training image by a random factor in "
                      "this range before the crop ([1, 1]: never, the reference)", minimum=SMALLEST_FACTOR,
                      maximum=1, pair=True)
"""The trainers' config key ``scale_range``."""


def check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    """(low, high) as floats; ValueError unless 0.05 <= low <= high <= 1."""
    low, high = check_pair("scale_range", scale_range, SMALLEST_FACTOR, 1)
    return float(low), float(high)


def random_rescale(image: np.ndarray, scale_range: tuple[float, float], min_side: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The H x W [x C] image shrunk by a factor U(low, high) (area interpolation, same dtype).

    ``scale_range``: (low, high) as ``check_scale_range`` returns it (the data sets check it once, at
    construction, not per sample). The factor is raised where needed so that the shorter side stays
    at least ``min_side`` (an image already shorter is returned as it is). With (1, 1) nothing is
    drawn and the image itself is returned; otherwise exactly one uniform draw is taken from ``rng``.
    """
    if tuple(scale_range) == NO_RESCALE:
        return image
    factor = rng.uniform(*scale_range)
    h, w = image.shape[:2]
    factor = min(1.0, max(factor, min_side / min(h, w)))
    size = (max(min_side, round(w * factor)), max(min_side, round(h * factor)))
    if factor == 1.0 or size == (w, h):
        return image
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return out[:, :, None] if image.ndim == 3 and out.ndim == 2 else out
