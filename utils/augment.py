"""The eight flip / rotation augmentations of the reference and their inverses.

Mode m in 0..7 rotates by (m // 2) quarter turns counter-clockwise (as displayed, ``np.rot90``)
and then, for odd m, flips up-down (reverses the rows):

====  ==========================  ==============================
mode  forward                     inverse
====  ==========================  ==============================
0     identity                    identity
1     flip up-down                flip up-down
2     rot90 CCW                   rot90 CW
3     rot90 CCW, flip up-down     flip up-down, rot90 CW
4     rot180                      rot180
5     rot180, flip up-down        flip up-down, rot180
6     rot270 CCW                  rot270 CW
7     rot270 CCW, flip up-down    flip up-down, rot270 CW
====  ==========================  ==============================

The NumPy functions act on the first two axes (H x W [x C] images); the torch functions act on
the last two axes (... x H x W tensors) with the same meaning, so a mode means the same picture
whichever library applies it. Self-ensembles average ``inverse(net(augment(x, m)), m)`` over m.
"""
from __future__ import annotations

import numpy as np
import torch

MODES = tuple(range(8))


def _check(mode: int) -> int:
    if mode not in MODES:
        raise ValueError(f"augmentation mode must be an integer in 0..7, got {mode!r}")
    return mode


def augment(image: np.ndarray, mode: int) -> np.ndarray:
    """Apply augmentation ``mode`` (0..7) to an H x W [x C] array; returns a contiguous copy."""
    _check(mode)
    out = np.rot90(image, k=mode // 2, axes=(0, 1))
    if mode % 2:
        out = out[::-1]
    return np.ascontiguousarray(out)


def inverse_augment(image: np.ndarray, mode: int) -> np.ndarray:
    """Undo ``augment(., mode)`` on an H x W [x C] array; returns a contiguous copy."""
    _check(mode)
    out = image[::-1] if mode % 2 else image
    out = np.rot90(out, k=mode // 2, axes=(1, 0))
    return np.ascontiguousarray(out)


def augment_tensor(image: torch.Tensor, mode: int) -> torch.Tensor:
    """Apply augmentation ``mode`` (0..7) to the last two axes of a ... x H x W tensor."""
    _check(mode)
    out = torch.rot90(image, k=mode // 2, dims=(-2, -1))
    if mode % 2:
        out = torch.flip(out, dims=(-2,))
    return out.contiguous()


def inverse_augment_tensor(image: torch.Tensor, mode: int) -> torch.Tensor:
    """Undo ``augment_tensor(., mode)`` on a ... x H x W tensor."""
    _check(mode)
    out = torch.flip(image, dims=(-2,)) if mode % 2 else image
    return torch.rot90(out, k=mode // 2, dims=(-1, -2)).contiguous()
