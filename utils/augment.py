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

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

Outputs = Union[torch.Tensor, tuple]

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


def _pairwise_mean(tensors: list) -> torch.Tensor:
    """The mean of the 8 tensors, summed pairwise."""
    count = len(tensors)
    while len(tensors) > 1:
        tensors = [a + b for a, b in zip(tensors[::2], tensors[1::2])]
    return tensors[0] / count


def inverse_augment_kinfo(kinfo: torch.Tensor, mode: int) -> torch.Tensor:
    """Undo ``augment_tensor(., mode)`` on the Gaussian kernel parameters an SR model estimates from
    the augmented image: ``kinfo`` N x 3 = (variance along one image axis, along the other, correlation
    rho). A quarter turn swaps the two axes and negates rho, a flip negates rho, a half turn changes
    nothing (each mode's map is its own inverse's on these parameters)."""
    _check(mode)
    quarter, flip = (mode // 2) % 2, mode % 2
    out = kinfo[:, [1, 0, 2]] if quarter else kinfo
    if (quarter + flip) % 2:
        out = out * torch.tensor([1.0, 1.0, -1.0], dtype=out.dtype, device=out.device)
    return out


def self_ensemble(fn: Callable[[torch.Tensor], Outputs], x: torch.Tensor,
                  inverses: Optional[Sequence[Callable[[torch.Tensor, int], torch.Tensor]]] = None) -> Outputs:
    """Mean of ``inverse_augment_tensor(fn(augment_tensor(x, m)), m)`` over the 8 modes.

    ``x``: N x C x H x W (any H, W); ``fn`` maps N x C x h x w to an N x C' x h' x w' map (h', w' an
    integer scale of h, w, or 1 x 1), or to a tuple of such maps. ``inverses``: for a tuple, one
    function ``(output, mode) -> output`` per output undoing the mode on it (default
    ``inverse_augment_tensor`` for each; ``inverse_augment_kinfo`` for an SR model's kernel parameters).
    Returns the raw means in the same structure (no clipping). The outputs are summed pairwise, so an
    equivariant ``fn`` (identity, pointwise maps) gives exactly ``fn(x)``.
    """
    outs = [fn(augment_tensor(x, m)) for m in MODES]
    if isinstance(outs[0], torch.Tensor):
        return _pairwise_mean([inverse_augment_tensor(o, m) for o, m in zip(outs, MODES)])
    undo = tuple(inverses) if inverses is not None else (inverse_augment_tensor,) * len(outs[0])
    return tuple(_pairwise_mean([undo[k](o[k], m) for o, m in zip(outs, MODES)])
                 for k in range(len(outs[0])))
