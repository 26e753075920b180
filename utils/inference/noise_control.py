"""Strength control of the denoisers: the R-Net conditioned on a chosen noise std map.

VIRNet's S-Net estimates the noise std of the image (``noise_variance``) and its R-Net restores the
image given that map (``restore``; ``networks.virnet.ModelContract``). ``--strength K`` multiplies
the std map the R-Net gets by K: K < 1 tells it the image is cleaner than estimated (more texture
kept, and more noise), K > 1 noisier (smoother). ``--noise_map VALUE|FILE`` replaces the estimate by
a constant std or a grayscale image of stds, both in 0-255 units (8-bit samples are the std itself,
16-bit ones are scaled to 0-255), still multiplied by K.

``NoiseControl`` carries the choice into ``Restorer``, which then runs the model wrapped in
``NoiseConditioned``; a given map travels as an extra input channel, so tiling and the flip
self-ensemble crop and turn it with the image. The model's noise output is the map the R-Net got,
so the heat maps show the map actually used. K = 1 without a map leaves the model unwrapped:
bit-identical to no flag.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from utils.errors import UserError
from utils.image_io import read_image_with_info

from .restorer import ESTIMATED_NOISE, InputImageError


class NoiseConditioned(nn.Module):
    """A denoiser whose R-Net gets ``strength`` times a noise std map: the S-Net's estimate, or,
    with ``given``, the std map (on the [0, 1] scale) in the last input channel.

    forward(x): x N x 3 x H x W (N x 4 x H x W with ``given``) -> (mu N x 3 x H x W, the variance map
    the R-Net was conditioned on, N x sigma_chn x H x W). Offers the members backends read
    (``OUTPUTS``, ``pad_multiple``, ``whole_image_estimators``, ``parts``).
    """

    def __init__(self, net: nn.Module, strength: float = 1.0, given: bool = False):
        super().__init__()
        self.net, self.strength, self.given = net, float(strength), given
        self.OUTPUTS = net.OUTPUTS

    @property
    def pad_multiple(self) -> int:
        """The wrapped model's padding multiple."""
        return self.net.pad_multiple

    def whole_image_estimators(self) -> dict[str, nn.Module]:
        """The wrapped model's, none when the S-Net is not run (a given map)."""
        return {} if self.given else self.net.whole_image_estimators()

    def parts(self) -> dict[str, nn.Module]:
        """The wrapped model's sub-networks by short name."""
        return self.net.parts()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.given:
            image, std = x[:, :-1], x[:, -1:] * self.strength
            variance = (std * std).expand(-1, self.net.sigma_chn, -1, -1)
        else:
            image, variance = x, self.net.noise_variance(x) * self.strength ** 2
        return self.net.restore(image, variance), variance


@dataclass(frozen=True)
class NoiseControl:
    """What the R-Net of a denoiser is conditioned on.

    strength: K > 0, the factor on the noise std map. std_255: None (the S-Net's estimate), a
    constant std or an H x W float32 map of stds, in 0-255 units. given: how the map was given
    (the VALUE or the FILE of ``--noise_map``), for labels and records.
    """
    strength: float = 1.0
    std_255: Union[None, float, np.ndarray] = None
    given: str = ""

    @property
    def active(self) -> bool:
        """Whether the model must be wrapped (K != 1 or a given map)."""
        return self.strength != 1.0 or self.std_255 is not None

    @property
    def label(self) -> str:
        """What the noise heat maps show, e.g. 'estimated noise std x 0.5', 'given noise std (25)'."""
        base = ESTIMATED_NOISE if self.std_255 is None else f"given noise std ({Path(self.given).name})"
        return base if self.strength == 1.0 else f"{base} x {self.strength:g}"

    def record(self) -> dict:
        """The control as results record it: {'strength': K, 'noise_map': VALUE|FILE or None}."""
        return {"strength": self.strength, "noise_map": self.given or None}

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` wrapped in ``NoiseConditioned`` when active, else ``net`` itself. Raises UserError
        for a model without the denoiser hooks or whose R-Net ignores the noise map."""
        if not self.active:
            return net
        if not hasattr(net, "restore") or not hasattr(net, "noise_variance"):
            raise UserError("--strength and --noise_map apply to the denoisers only")
        if not net.noise_cond:
            raise UserError("this model's R-Net is not conditioned on the noise map (noise_cond false); "
                            "--strength and --noise_map would change nothing")
        return NoiseConditioned(net, self.strength, self.std_255 is not None)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (1 x 3 x H x W) with the given std map on the [0, 1] scale as a last channel, or ``x``
        itself without a given map. Raises InputImageError when the map's size is not the image's."""
        if self.std_255 is None:
            return x
        height, width = x.shape[-2:]
        if np.ndim(self.std_255) == 0:
            std = torch.full((1, 1, height, width), float(self.std_255) / 255.0)
        else:
            if self.std_255.shape != (height, width):
                mh, mw = self.std_255.shape
                raise InputImageError(f"--noise_map {self.given} is {mw} x {mh}, the image {width} x {height}; "
                                      f"give a map of the image's size")
            std = torch.from_numpy(self.std_255 / np.float32(255.0))[None, None]
        return torch.cat([x, std.to(x.dtype)], dim=1)


def add_denoiser_args(parser: argparse.ArgumentParser) -> None:
    """Add the denoisers' strength control: --strength K and --noise_map VALUE|FILE."""
    parser.add_argument("--strength", type=float, default=1.0, metavar="K",
                        help="multiply the noise std map the R-Net is conditioned on by K (default 1; "
                             "K < 1 keeps more texture, K > 1 smooths more)")
    parser.add_argument("--noise_map", default=None, metavar="VALUE|FILE",
                        help="condition the R-Net on this noise std instead of the S-Net's estimate: a constant "
                             "(0-255) or a grayscale image of stds (0-255) of the input's size")


def read_noise_map(path: Path) -> np.ndarray:
    """A grayscale image of noise stds as an H x W float32 map in 0-255 units (EXIF orientation
    applied, as for the images). Raises UserError for an unreadable or colour image."""
    im, info = read_image_with_info(path)
    if not info.gray and not (np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 0], im[..., 2])):
        raise UserError(f"--noise_map {path}: a colour image; give a grayscale image of noise stds (0-255), "
                        f"one value per pixel")
    return im[..., 0] * np.float32(255.0)


def noise_control_from_args(args: argparse.Namespace) -> Optional[NoiseControl]:
    """The ``NoiseControl`` of --strength and --noise_map, or None for a demo without them.
    Raises UserError for a strength that is not a positive number or a bad map."""
    if not hasattr(args, "strength"):
        return None
    if not math.isfinite(args.strength) or args.strength <= 0:
        raise UserError(f"--strength must be a positive number, got {args.strength:g}")
    if args.noise_map is None:
        return NoiseControl(args.strength)
    try:
        value = float(args.noise_map)
    except ValueError:
        path = Path(args.noise_map)
        if not path.is_file():
            raise UserError(f"--noise_map: {args.noise_map} is neither a number (0-255) nor an image file") from None
        return NoiseControl(args.strength, read_noise_map(path), str(path))
    if not 0 <= value <= 255:
        raise UserError(f"--noise_map: a constant noise std must be in [0, 255], got {value:g}")
    return NoiseControl(args.strength, value, args.noise_map)
