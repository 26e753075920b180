"""VIRNet models: S-Net (noise variance), K-Net (blur kernel, SR only) and R-Net (restorer).

Each model class states what generic code (training, tiled inference, backends) needs to know
about it, so that no generic code names its parts (``ModelContract``): the names of the forward
outputs, the side multiple the input is padded to, the sub-networks that estimate from the whole
image, and the sub-networks by short name (gradient-clipping groups).
"""
from math import log
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .attresunet import AttResUNet
from .dncnn import DnCNN
from .knet import KernelNet

LOG_SIGMA_MIN = log(1e-10)
LOG_SIGMA_MAX = log(1e2)


def _variance(log_variance: torch.Tensor) -> torch.Tensor:
    """exp of the S-Net output clamped to [log 1e-10, log 1e2]."""
    return torch.exp(torch.clamp(log_variance, min=LOG_SIGMA_MIN, max=LOG_SIGMA_MAX))


class ModelContract(nn.Module):
    """What every VIRNet model declares for generic code.

    ``OUTPUTS``: names of the forward outputs, in order ('mu' the restored image, 'sigma' the noise
    variance, 'kinfo' the kernel of an SR model). ``pad_multiple``: the input sides are padded to
    multiples of it. ``whole_image_estimators()``: sub-networks whose output summarises the whole
    input (global pooling), so a crop's estimate differs from the whole image's: tiled inference
    runs them once on the whole image. ``parts()``: the sub-networks by short name ('R', 'S',
    'K'), e.g. the config keys ``clip_grad_<name>`` clip each one's gradient separately.
    A denoiser also offers its forward in two halves, so that inference can condition the R-Net on
    another noise map than the S-Net's (strength control): ``noise_variance(x)`` and
    ``restore(x, variance)``, with ``sigma_chn`` the channels of the variance map and
    ``noise_cond`` whether the R-Net reads it at all.
    """

    OUTPUTS: Tuple[str, ...] = ()

    @property
    def pad_multiple(self) -> int:
        """The side multiple the R-Net pads its input to (2**(depth - 1))."""
        return self.RNet.pad_multiple

    def whole_image_estimators(self) -> Dict[str, nn.Module]:
        """Name -> sub-network, for those whose output pools over the whole input."""
        raise NotImplementedError

    def parts(self) -> Dict[str, nn.Module]:
        """Short name -> sub-network."""
        raise NotImplementedError


class VIRAttResUNet(ModelContract):
    """VIRNet for denoising.

    forward(x): x N x im_chn x H x W in [0, 1] (noisy); returns (mu, sigma): mu N x im_chn x H x W
    the restored image (not clamped), sigma the estimated noise *variance* map,
    N x sigma_chn x H x W (N x sigma_chn x 1 x 1 when noise_avg), in [1e-10, 1e2].
    """

    OUTPUTS = ("mu", "sigma")

    def __init__(self, im_chn: int, sigma_chn: int = 3, n_feat: Sequence[int] = (64, 128, 192),
                 dep_S: int = 5, n_resblocks: int = 2, noise_cond: bool = True,
                 extra_mode: str = "Input", noise_avg: bool = False):
        super().__init__()
        self.noise_cond = noise_cond
        self.noise_avg = noise_avg
        self.sigma_chn = sigma_chn
        self.SNet = DnCNN(im_chn, sigma_chn, dep=dep_S, noise_avg=noise_avg)
        self.RNet = AttResUNet(im_chn, extra_chn=sigma_chn if noise_cond else 0, out_chn=im_chn,
                               n_feat=list(n_feat), n_resblocks=n_resblocks, extra_mode=extra_mode)

    def whole_image_estimators(self) -> Dict[str, nn.Module]:
        """The S-Net when it pools its map to one value per channel (noise_avg), else none."""
        return {"SNet": self.SNet} if self.noise_avg else {}

    def parts(self) -> Dict[str, nn.Module]:
        """R: the restoring U-Net; S: the noise estimator."""
        return {"R": self.RNet, "S": self.SNet}

    def noise_variance(self, x: torch.Tensor) -> torch.Tensor:
        """The S-Net's noise variance map of x: N x sigma_chn x H x W (x 1 x 1 when noise_avg)."""
        return _variance(self.SNet(x))

    def restore(self, x: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """The R-Net's restoration of x (N x im_chn x H x W) conditioned on the noise std
        sqrt(variance), variance N x sigma_chn x H x W on the [0, 1] scale (ignored without noise_cond)."""
        return self.RNet(x, variance.sqrt() if self.noise_cond else None)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        sigma = self.noise_variance(x)
        return self.restore(x, sigma), sigma


class VIRAttResUNetSR(ModelContract):
    """VIRNet for blind super-resolution.

    forward(x, sf): x N x im_chn x h x w in [0, 1] (low resolution), sf the integer scale.
    Returns (mu, kinfo, sigma): mu N x im_chn x sf*h x sf*w; kinfo N x 3 = (variance along columns,
    variance along rows, correlation rho); sigma the noise variance, N x sigma_chn x 1 x 1 when
    noise_avg else N x sigma_chn x h x w.
    """

    OUTPUTS = ("mu", "kinfo", "sigma")

    def __init__(self, im_chn: int, sigma_chn: int = 1, kernel_chn: int = 3,
                 n_feat: Sequence[int] = (64, 128, 192), dep_S: int = 5, dep_K: int = 8,
                 noise_cond: bool = True, kernel_cond: bool = True, n_resblocks: int = 1,
                 extra_mode: str = "Down", noise_avg: bool = True):
        super().__init__()
        self.noise_cond = noise_cond
        self.kernel_cond = kernel_cond
        self.noise_avg = noise_avg
        extra_chn = kernel_chn * kernel_cond + sigma_chn * noise_cond
        self.SNet = DnCNN(im_chn, sigma_chn, dep=dep_S, noise_avg=noise_avg)
        self.KNet = KernelNet(im_chn, kernel_chn, num_blocks=dep_K)
        self.RNet = AttResUNet(im_chn, extra_chn=extra_chn, out_chn=im_chn, n_feat=list(n_feat),
                               n_resblocks=n_resblocks, extra_mode=extra_mode)

    def whole_image_estimators(self) -> Dict[str, nn.Module]:
        """The K-Net (always pooled) and the S-Net when it pools (noise_avg)."""
        return {"KNet": self.KNet, **({"SNet": self.SNet} if self.noise_avg else {})}

    def parts(self) -> Dict[str, nn.Module]:
        """R: the restoring U-Net; S: the noise estimator; K: the kernel estimator."""
        return {"R": self.RNet, "S": self.SNet, "K": self.KNet}

    def super_resolve(self, x: torch.Tensor, sf: int, kinfo: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """The R-Net's super-resolved image of x (N x im_chn x h x w in [0, 1]) conditioned on a kernel
        ``kinfo`` (N x 3 x 1 x 1: var1, var2 in HR pixels^2, rho) and a noise ``variance`` (the S-Net's
        shape, on the [0, 1] scale); N x im_chn x sf*h x sf*w. ``forward`` passes the estimates."""
        x_up = F.interpolate(x, scale_factor=sf, mode="nearest")
        size = x_up.shape[-2:]
        extra = []
        if self.kernel_cond:
            extra.append(kinfo.expand(-1, -1, *size))
        if self.noise_cond:
            std = variance.sqrt()
            extra.append(std.expand(-1, -1, *size) if self.noise_avg
                         else F.interpolate(std, scale_factor=sf, mode="nearest"))
        return self.RNet(x_up, torch.cat(extra, 1) if extra else None)

    def forward(self, x: torch.Tensor, sf: int):
        sigma = _variance(self.SNet(x))
        kinfo = self.KNet(x)
        return self.super_resolve(x, sf, kinfo, sigma), kinfo.flatten(1), sigma
