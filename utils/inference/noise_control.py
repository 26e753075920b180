"""Strength control of the denoisers: the restoration assumes a chosen noise std map.

VIRNet's S-Net estimates the noise std of the image (``noise_variance``) and its R-Net restores the
image given that map (``restore``; ``networks.virnet.ModelContract``). ``--strength K`` makes the
restoration assume K times the estimate; ``--noise_map VALUE|FILE`` a constant std or a grayscale
image of stds instead, both in 0-255 units (8-bit samples are the std itself, 16-bit ones are
scaled to 0-255), also multiplied by K. Call the assumed map M and the estimate S.

The R-Net is only fed maps it responds to monotonically: measured on CBSD68 (docs/strength.md),
above S it makes artifacts, and below S / 2 its output can get smoother again. So it gets M clamped
to [S / 2, S], and the rest of the way goes in the output space, monotone by construction:

- where M < S / 2, the restoration x_half (the R-Net on S / 2) is blended with the input y:
  ``u = y - (2 M / S) (y - x_half)``, a point on the segment from x_half to y, so K < 1/2 keeps
  ever more texture, and noise (K = 0 would be the input itself);
- where M > S, the excess E = (M - S) is removed by a weighted vectorial total-variation (ROF) step
  on the R-Net's output x1 (on S), ``argmin_u 0.5 ||u - x1||^2 + sum_i TV_WEIGHT * E_i |grad u|_i`` (``tv_smooth``; the
  colour channels share one gradient norm, so edges stay aligned and no colour fringes appear).
  For ``--strength K`` the weight is (K - 1) S, one fixed map times a factor growing with K, and the
  total variation the step minimises then never grows with K.

``NoiseControl`` carries the choice into ``Restorer``, which runs the model wrapped in
``NoiseConditioned`` (a given map travels as an extra input channel, so tiling and the flip
self-ensemble crop and turn it with the image) and applies the blend and the smoothing to the whole
assembled output (``NoiseControl.finish``). The model's noise output is M, so the heat maps show the map the
restoration assumed. K = 1 without a map leaves the model unwrapped: bit-identical to no flag.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError
from utils.image_io import read_image_with_info

from .restorer import ESTIMATED_NOISE, InputImageError

RNET_FLOOR = 0.5
"""The lowest map the R-Net is conditioned on, as a share of the S-Net's estimate."""
STRENGTH_RANGE = (0.25, 4.0)
"""The accepted --strength factors: measured monotone and artifact-free over this range
(docs/strength.md); beyond it the picture is either the noisy input or a flat cartoon."""
TV_WEIGHT = 0.25
"""The total-variation weight per unit of excess std (both on the [0, 1] scale)."""
TV_ITERATIONS = 100
"""Iterations of the accelerated dual solver of ``tv_smooth`` (a fixed count: same cost on any device)."""
KEEP, EXCESS = "keep", "excess"
"""The names of ``NoiseConditioned``'s extra outputs: the share 1 - min(M / (RNET_FLOOR S), 1) of the
input that is blended back (N x sigma_chn x H x W) and the excess std (M - S)+ averaged over the channels (N x 1 x H x W)."""


def total_variation(im: np.ndarray) -> float:
    """The total variation of an image in 0-255 units: the mean absolute difference of vertical
    neighbours plus that of horizontal ones, of an H x W (x C) float image in [0, 1], times 255."""
    im = np.asarray(im, dtype=np.float64)
    return float(np.abs(np.diff(im, axis=0)).mean() + np.abs(np.diff(im, axis=1)).mean()) * 255.0


def _gradient(u: torch.Tensor) -> torch.Tensor:
    """Forward differences of N x C x H x W ``u`` (zero across the last row / column):
    N x 2 x C x H x W (along columns, along rows)."""
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return torch.stack([dx, dy], dim=1)


def _divergence(p: torch.Tensor) -> torch.Tensor:
    """The negative adjoint of ``_gradient``: N x 2 x C x H x W -> N x C x H x W."""
    px, py = p[:, 0].clone(), p[:, 1].clone()
    px[..., -1], py[..., -1, :] = 0, 0
    return px - F.pad(px, (1, 0))[..., :-1] + py - F.pad(py, (0, 0, 1, 0))[..., :-1, :]


def tv_smooth(image: torch.Tensor, weight: torch.Tensor, iterations: int = TV_ITERATIONS) -> torch.Tensor:
    """The weighted vectorial ROF step ``argmin_u 0.5 ||u - image||^2 + sum_i weight_i |grad u|_i``,
    where |grad u|_i is the Euclidean norm of both differences of all channels at pixel i.

    image: N x C x H x W (any scale, any device); weight: N x 1 x H x W (or broadcastable), >= 0, in
    the units of ``image``. Solved by FISTA on the dual (projected gradient, step 1/8) for a fixed
    number of ``iterations``; a zero weight everywhere returns ``image`` exactly. Returns N x C x H x W.
    """
    if image.shape[-2] < 2 or image.shape[-1] < 2 or not bool((weight > 0).any()):
        return image
    weight = weight.expand(image.shape[0], 1, *image.shape[-2:])[:, None]
    p = torch.zeros((image.shape[0], 2, *image.shape[1:]), dtype=image.dtype, device=image.device)
    q, t = p, 1.0
    for _ in range(iterations):
        step = q + _gradient(image + _divergence(q)) / 8.0
        norm = step.square().sum(dim=(1, 2), keepdim=True).sqrt()
        p_next = step * torch.where(norm > weight, weight / norm.clamp_min(1e-12), torch.ones_like(norm))
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        q, p, t = p_next + (t - 1.0) / t_next * (p_next - p), p_next, t_next
    return image + _divergence(p)


class NoiseConditioned(nn.Module):
    """A denoiser whose restoration assumes the noise std map M: ``strength`` times the S-Net's
    estimate S, or, with ``given``, ``strength`` times the std map (on the [0, 1] scale) in the last
    input channel. The R-Net is conditioned on M clamped to [RNET_FLOOR S, S]; the rest is returned
    for ``NoiseControl.finish``.

    forward(x): x N x 3 x H x W (N x 4 x H x W with ``given``) -> (mu N x 3 x H x W, the assumed
    variance M^2, N x sigma_chn x H x W, the share of the input to blend back
    1 - min(M / (RNET_FLOOR S), 1), N x sigma_chn x H x W, the
    excess std (M - S)+ averaged over the channels, N x 1 x H x W; 1 x 1 sides when the S-Net pools
    and no map is given). Offers the members backends read (``OUTPUTS``, ``pad_multiple``,
    ``whole_image_estimators``, ``parts``).
    """

    def __init__(self, net: nn.Module, strength: float = 1.0, given: bool = False):
        super().__init__()
        self.net, self.strength, self.given = net, float(strength), given
        self.OUTPUTS = (*net.OUTPUTS, KEEP, EXCESS)

    @property
    def pad_multiple(self) -> int:
        """The wrapped model's padding multiple."""
        return self.net.pad_multiple

    def whole_image_estimators(self) -> dict[str, nn.Module]:
        """The wrapped model's (the S-Net when it pools)."""
        return self.net.whole_image_estimators()

    def parts(self) -> dict[str, nn.Module]:
        """The wrapped model's sub-networks by short name."""
        return self.net.parts()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = x[:, :-1] if self.given else x
        variance = self.net.noise_variance(image)
        if self.given:
            std = x[:, -1:] * self.strength
            assumed = (std * std).expand(-1, self.net.sigma_chn, -1, -1)
        else:
            assumed = variance * self.strength ** 2
        estimate, wanted = variance.sqrt(), assumed.sqrt()
        conditioned = torch.minimum(torch.maximum(assumed, variance * RNET_FLOOR ** 2), variance)
        keep = (1.0 - wanted / (estimate * RNET_FLOOR).clamp_min(1e-12)).clamp(0.0, 1.0)
        excess = (wanted - estimate).clamp_min(0.0).mean(dim=1, keepdim=True)
        return self.net.restore(image, conditioned), assumed, keep, excess


@dataclass(frozen=True)
class NoiseControl:
    """The noise std map the restoration of a denoiser assumes.

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
        for a model without the denoiser hooks (an SR model)."""
        if not self.active:
            return net
        if not hasattr(net, "restore") or not hasattr(net, "noise_variance"):
            raise UserError("--strength and --noise_map apply to the denoisers only")
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

    def finish(self, outputs: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs of the wrapped model over the whole image (after tiling and flips) moved to the
        assumed map: with y the input image (the first 3 channels of the model input ``x``), 'mu'
        becomes ``tv_smooth(mu + keep (y - mu), TV_WEIGHT * excess)``; the extra outputs are dropped.
        Outputs without them (an inactive control) are returned unchanged."""
        if EXCESS not in outputs:
            return outputs
        outputs = dict(outputs)
        keep, excess, mu = outputs.pop(KEEP), outputs.pop(EXCESS), outputs["mu"]
        mu = mu + keep * (x[:, :mu.shape[1]].to(mu) - mu) if bool(keep.any()) else mu
        outputs["mu"] = tv_smooth(mu, TV_WEIGHT * excess)
        return outputs


def add_denoiser_args(parser: argparse.ArgumentParser) -> None:
    """Add the denoisers' strength control: --strength K and --noise_map VALUE|FILE."""
    parser.add_argument("--strength", type=float, default=1.0, metavar="K",
                        help=f"assume K times the estimated noise std (default 1, from {STRENGTH_RANGE[0]:g} to "
                             f"{STRENGTH_RANGE[1]:g}): K < 1 keeps more texture (and noise), K > 1 smooths more "
                             "(docs/strength.md)")
    parser.add_argument("--noise_map", default=None, metavar="VALUE|FILE",
                        help="assume this noise std instead of the S-Net's estimate (times K): a constant "
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
    Raises UserError for a strength outside ``STRENGTH_RANGE`` (NaN included), a bad map, or an
    assumed std (K times the map) above 255."""
    if not hasattr(args, "strength"):
        return None
    low, high = STRENGTH_RANGE
    if not low <= args.strength <= high:
        raise UserError(f"--strength must be in [{low:g}, {high:g}] (beyond it the output is the noisy input "
                        f"or a flat cartoon; docs/strength.md), got {args.strength:g}")
    if args.noise_map is None:
        return NoiseControl(args.strength)
    try:
        value = float(args.noise_map)
    except ValueError:
        path = Path(args.noise_map)
        if not path.is_file():
            raise UserError(f"--noise_map: {args.noise_map} is neither a number (0-255) nor an image file") from None
        control = NoiseControl(args.strength, read_noise_map(path), str(path))
        value = float(control.std_255.max(initial=0.0))
    else:
        if not 0 <= value <= 255:
            raise UserError(f"--noise_map: a constant noise std must be in [0, 255], got {value:g}")
        control = NoiseControl(args.strength, value, args.noise_map)
    if value * args.strength > 255:
        raise UserError(f"--noise_map {args.noise_map} with --strength {args.strength:g} assumes a noise std of "
                        f"{value * args.strength:g}, above 255 (the whole 8-bit range); lower one of them")
    return control
