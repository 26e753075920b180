"""Scale augmentation of training images: each sample sees its source image shrunk by a random
factor before the crop, so that 108 photographs yield more distinct content per patch (the
multi-scale patches of DnCNN's training data, drawn continuously). Not in the reference: its
datasets crop the images at their own size, which ``scale_range = (1, 1)`` keeps, with no draw.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from utils.config import Key

NO_RESCALE = (1.0, 1.0)
SCALE_RANGE_KEY = Key("floats", list(NO_RESCALE), "[low, high]: shrink each training image by a random factor in "
                      "this range before the crop ([1, 1]: never, the reference)", minimum=0.05, maximum=1,
                      min_items=2)
"""The trainers' config key ``scale_range``; ``scale_range_problem`` checks what the schema cannot."""


def scale_range_problem(scale_range: Sequence[float]) -> tuple[bool, str]:
    """(True, the config error's message) unless ``scale_range`` is two numbers 0 < low <= high <= 1."""
    values = list(scale_range)
    bad = len(values) != 2 or not 0 < values[0] <= values[-1] <= 1
    return bad, f"config key 'scale_range': expected [low, high] with 0 < low <= high <= 1, got {values}"


def check_scale_range(scale_range: Sequence[float]) -> tuple[float, float]:
    """(low, high) as floats; ValueError unless 0 < low <= high <= 1."""
    bad, message = scale_range_problem(scale_range)
    if bad:
        raise ValueError(message)
    return float(scale_range[0]), float(scale_range[1])


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
