"""``Restorer``: the one switchboard for how a model restores an image (backend, precision,
tiling, flip self-ensemble), used by the demos, bench/ and the tests alike."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from utils.augment import inverse_augment_kinfo, inverse_augment_tensor, self_ensemble
from utils.errors import UserError

from .auto import plan_run
from .backends import BACKENDS
from .tiling import default_tiling, tiled_call, tiling_params

MEGAPIXEL = 1024 * 1024
"""Pixels per megapixel in timings (the reference's ``megatime``)."""
ESTIMATED_NOISE = "estimated noise std"
"""How the heat maps name the S-Net's own noise estimate."""


class InputImageError(UserError):
    """One input image cannot be processed (unreadable, too small); folder runs skip it."""


class NonFiniteOutputError(UserError):
    """The network gave NaN or infinite values for one image; nothing may be written for it."""


@dataclass
class Restored:
    """The outputs of one image.

    image: H' x W' x 3 float32 in [0, 1], the restored image (mu clipped); H' = sf * H for SR.
    noise_var: h x w x C float32, the estimated noise variance on the [0, 1] scale (1 x 1 x C when
        the model pools it; with strength control, the map the R-Net was conditioned on); its square
        root times 255 is the noise std in 0-255 units.
    kinfo: (3,) float32 (variance along columns, along rows, correlation) for SR, else None.
    tiled: whether tiled inference was used.
    seconds: wall-clock time of the model calls (all flips, host-device copies included).
    """
    image: np.ndarray
    noise_var: np.ndarray
    kinfo: Optional[np.ndarray]
    tiled: bool
    seconds: float = 0.0

    @property
    def noise_std_255(self) -> np.ndarray:
        """The estimated noise standard deviation in 0-255 units, h x w x C float32."""
        return np.sqrt(self.noise_var) * 255.0


class Restorer:
    """Runs a loaded VIRNet model (eval mode, on its device) on H x W x 3 float images.

    ``sf``: the scale factor for an SR model (None for a denoiser); ``tile`` / ``overlap``: window
    side and overlap in input pixels (``tile=0`` disables tiling; None: ``tiling.default_tiling``, a
    bound in output pixels, from the free memory on CUDA); ``precision``:
    'fp32', 'bf16' or 'auto' and ``backend``: a name of ``backends.BACKENDS`` or None, resolved by
    ``auto.plan_run`` into ``self.plan`` (``net`` may be an ``onnx_backend.OnnxModel``); ``flip``:
    the reference's self-ensemble, the mean of the raw outputs (image and noise map; an SR model's
    kernel parameters turned back with ``utils.augment.inverse_augment_kinfo``) over the 8 flips /
    rotations before the image is clipped (8 times slower); ``noise``: a denoiser's
    strength control (``noise_control.NoiseControl``: the R-Net's noise std map scaled, or given;
    PyTorch models only). ``net`` stays available as ``self.net``. Raises UserError for a bad option.
    """

    def __init__(self, net: nn.Module, sf: Optional[int] = None, tile: Optional[int] = None,
                 overlap: Optional[int] = None, precision: str = "fp32", flip: bool = False,
                 backend: Optional[str] = None, noise=None):
        self.plan = plan_run(net, precision, backend)
        if noise and noise.active and self.plan.backend == "onnx":
            raise UserError("--strength and --noise_map need a PyTorch checkpoint: an .onnx file runs the S-Net "
                            "and the R-Net as one graph")
        self.net, self.noise = net, noise
        self.backend = BACKENDS[self.plan.backend](noise.wrap(net) if noise else net, self.plan.precision)
        default = default_tiling(self.backend.device, self.backend.pad_multiple, sf)
        self.tile, self.overlap = tiling_params(default[0] if tile is None else tile,
                                                default[1] if overlap is None else overlap, self.backend.pad_multiple)
        self.sf, self.precision, self.flip = sf, self.plan.precision, flip
        # the smallest input side: the R-Net's reflect padding must be shorter than the side it pads
        # (for SR the R-Net sees the up-sampled image)
        self.min_side = max(2, math.ceil(self.backend.pad_multiple / (sf or 1)))
        self.seconds, self.pixels = 0.0, 0  # model time and input pixels of all restorations so far

    @property
    def seconds_per_megapixel(self) -> float:
        """Model time per input megapixel (``MEGAPIXEL`` pixels) over all restorations so far."""
        return self.seconds * MEGAPIXEL / max(self.pixels, 1)

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.backend.device

    @property
    def noise_label(self) -> str:
        """What the noise output (``Restored.noise_var``) is, for the heat maps' titles."""
        return self.noise.label if self.noise else ESTIMATED_NOISE

    def will_tile(self, height: int, width: int) -> bool:
        """Whether an input of this size is restored window by window."""
        return self.tile > 0 and max(height, width) > self.tile

    def _run(self, x: torch.Tensor, tiled: list) -> tuple[torch.Tensor, ...]:
        """The model outputs of x (1 x 3 x h x w), tiled as configured; appends whether it tiled."""
        args = () if self.sf is None else (self.sf,)
        outputs, was_tiled = tiled_call(self.backend, x, *args, tile=self.tile, overlap=self.overlap)
        tiled.append(was_tiled)
        return outputs

    def __call__(self, im: np.ndarray, name: str = "") -> Restored:
        """Restore ``im``: H x W x 3 float32 (nominally [0, 1]; noisy inputs may exceed it); ``name``
        (e.g. the file name) starts the error messages.

        Raises InputImageError when it is not H x W x 3 or a side is shorter than ``self.min_side``,
        and NonFiniteOutputError when an output holds NaN or infinite values.
        """
        if im.ndim != 3 or im.shape[2] != 3:
            raise InputImageError(f"expected an H x W x 3 image, got shape {im.shape}")
        height, width = im.shape[:2]
        if min(height, width) < self.min_side:
            raise InputImageError(f"image too small: {width} x {height} "
                                  f"(min {self.min_side} x {self.min_side})")
        x = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32).transpose(2, 0, 1))[None]
        x = self.noise.model_input(x) if self.noise else x
        tiled: list[bool] = []
        start = time.perf_counter()
        undo = [inverse_augment_kinfo if name == "kinfo" else inverse_augment_tensor for name in self.backend.outputs]
        outputs = self_ensemble(lambda t: self._run(t, tiled), x, undo) if self.flip else self._run(x, tiled)
        out = dict(zip(self.backend.outputs, outputs))
        out = self.noise.finish(out, x) if self.noise else out  # the strength control, if any
        seconds = time.perf_counter() - start
        self.seconds, self.pixels = self.seconds + seconds, self.pixels + height * width
        bad = [key for key, value in out.items() if not bool(torch.isfinite(value).all())]
        if bad:
            hint = "try --precision fp32" if self.precision == "bf16" else "the weights may be damaged"
            raise NonFiniteOutputError(f"{name + ': ' if name else ''}the network's output ({', '.join(bad)}) "
                                       f"holds NaN or infinite values; nothing written for it ({hint})")
        kinfo = out.get("kinfo")
        return Restored(image=out["mu"][0].clamp(0.0, 1.0).permute(1, 2, 0).numpy(),
                        noise_var=out["sigma"][0].permute(1, 2, 0).numpy(),
                        kinfo=None if kinfo is None else kinfo[0].numpy(), tiled=any(tiled), seconds=seconds)
