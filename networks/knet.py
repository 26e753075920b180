"""K-Net: estimates the anisotropic Gaussian blur kernel as kinfo = (var1, var2, rho)."""
from math import log

import torch
from torch import nn

LOG_VAR_MIN = log(1e-4)
LOG_VAR_MAX = log(1e2)


class CALayer(nn.Module):
    """Channel attention: x * sigmoid(MLP(avgpool(x))); reduction 16."""

    def __init__(self, nf: int, reduction: int = 16):
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf // reduction, 1, 1, 0),
            nn.LeakyReLU(0.2),
            nn.Conv2d(nf // reduction, nf, 1, 1, 0),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.body(self.avg(x))


class RB_Layer(nn.Module):  # noqa: N801 (name fixed by the released checkpoints)
    """Residual block conv-lrelu-conv-CA with identity skip."""

    def __init__(self, nf: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(nf, nf, 3, 1, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(nf, nf, 3, 1, 1),
            CALayer(nf),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class KernelNet(nn.Module):
    """Kernel estimator.

    Input N x in_nc x H x W (the low-resolution image); output N x 3 x 1 x 1 holding
    (variance along columns, variance along rows) in [1e-4, 1e2] and the correlation rho in (-1, 1).
    """

    def __init__(self, in_nc: int = 3, out_chn: int = 3, nf: int = 64, num_blocks: int = 8):
        super().__init__()
        self.head = nn.Conv2d(in_nc, nf, kernel_size=9, stride=4, padding=4, bias=False)
        self.body = nn.Sequential(*[RB_Layer(nf) for _ in range(num_blocks)])
        self.tail = nn.Sequential(nn.Conv2d(nf, out_chn, 3, 1, 1), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tail(self.body(self.head(x)))
        variances = torch.exp(torch.clamp(out[:, :2], min=LOG_VAR_MIN, max=LOG_VAR_MAX))
        rho = torch.tanh(out[:, 2:3])
        return torch.cat((variances, rho), dim=1)
