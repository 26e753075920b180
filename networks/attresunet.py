"""R-Net: a residual UNet whose blocks are modulated by extra maps (noise level, kernel)."""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

EXTRA_MODES = ("null", "input", "down", "both")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of N x C x H x W so that H and W divide by `multiple`."""
    h, w = x.shape[-2:]
    bottom = -h % multiple
    right = -w % multiple
    if bottom == 0 and right == 0:
        return x
    return F.pad(x, (0, right, 0, bottom), mode="reflect")


class AttLayer(nn.Module):
    """Maps extra maps (N x extra_chn x H x W) to a multiplicative mask in (0, 1) and an additive
    shift, both N x out_chn x H x W."""

    def __init__(self, out_chn: int = 64, extra_chn: int = 4):
        super().__init__()
        nf1, nf2 = out_chn // 8, out_chn // 4
        self.conv1 = nn.Conv2d(extra_chn, nf1, kernel_size=1)
        self.leaky1 = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(nf1, nf2, kernel_size=1)
        self.leaky2 = nn.LeakyReLU(0.2)
        self.mul_conv = nn.Conv2d(nf2, out_chn, kernel_size=1)
        self.sig = nn.Sigmoid()
        self.add_conv = nn.Conv2d(nf2, out_chn, kernel_size=1)

    def forward(self, extra_maps: torch.Tensor):
        fea = self.leaky2(self.conv2(self.leaky1(self.conv1(extra_maps))))
        return self.sig(self.mul_conv(fea)), self.add_conv(fea)


class AttResBlock(nn.Module):
    """Residual block x + conv2(lrelu(conv1(lrelu(x*m1 + a1)) * m2 + a2)); without extra maps
    (extra_chn == 0) the modulation is the identity."""

    def __init__(self, nf: int = 64, extra_chn: int = 4):
        super().__init__()
        self.extra_chn = extra_chn
        if extra_chn > 0:
            self.sft1 = AttLayer(nf, extra_chn)
            self.sft2 = AttLayer(nf, extra_chn)
        self.lrelu1 = nn.LeakyReLU(0.2)
        self.conv1 = nn.Conv2d(nf, nf, kernel_size=3, padding=1)
        self.lrelu2 = nn.LeakyReLU(0.2)
        self.conv2 = nn.Conv2d(nf, nf, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, extra_maps: Optional[torch.Tensor]) -> torch.Tensor:
        fea = x
        if self.extra_chn > 0:
            mul, add = self.sft1(extra_maps)
            fea = fea * mul + add
        fea = self.conv1(self.lrelu1(fea))
        if self.extra_chn > 0:
            mul, add = self.sft2(extra_maps)
            fea = fea * mul + add
        return x + self.conv2(self.lrelu2(fea))


class DownBlock(nn.Module):
    """n_resblocks AttResBlocks then a stride-2 conv (Identity at the bottom level).
    Returns (down-sampled features, features before down-sampling)."""

    def __init__(self, in_chn: int = 64, out_chn: int = 128, extra_chn: int = 4,
                 n_resblocks: int = 1, downsample: bool = True):
        super().__init__()
        self.body = nn.ModuleList([AttResBlock(in_chn, extra_chn) for _ in range(n_resblocks)])
        self.downsampler = (nn.Conv2d(in_chn, out_chn, kernel_size=3, stride=2, padding=1)
                            if downsample else nn.Identity())

    def forward(self, x: torch.Tensor, extra_maps: Optional[torch.Tensor]):
        for block in self.body:
            x = block(x, extra_maps)
        return self.downsampler(x), x


class UpBlock(nn.Module):
    """2x transposed-conv up-sampling, skip added, then n_resblocks plain AttResBlocks."""

    def __init__(self, in_chn: int = 128, out_chn: int = 64, n_resblocks: int = 1):
        super().__init__()
        self.upsampler = nn.ConvTranspose2d(in_chn, out_chn, kernel_size=2, stride=2)
        self.body = nn.ModuleList([AttResBlock(out_chn, 0) for _ in range(n_resblocks)])

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        x = self.upsampler(x) + bridge
        for block in self.body:
            x = block(x, None)
        return x


class AttResUNet(nn.Module):
    """Attention-modulated residual UNet with a global residual connection.

    Args:
        in_chn: image channels; out_chn: output channels (equal to in_chn for the residual).
        extra_chn: channels of the conditioning maps (0 for none).
        n_resblocks: blocks per level; n_feat: widths per level (depth = len(n_feat)).
        extra_mode: 'Null', 'Input' (maps concatenated to the input), 'Down' (maps modulate the
            encoder blocks) or 'Both'; case-insensitive.

    forward(x, extra_maps): x N x in_chn x H x W, extra_maps N x extra_chn x H x W (or None);
    returns N x out_chn x H x W (any H, W: padded internally, cropped back).
    """

    def __init__(self, in_chn: int = 3, extra_chn: int = 4, out_chn: int = 3,
                 n_resblocks: int = 2, n_feat: Sequence[int] = (64, 128, 196, 256),
                 extra_mode: str = "Input"):
        super().__init__()
        self.depth = len(n_feat)
        self.extra_mode = extra_mode.lower()
        if self.extra_mode not in EXTRA_MODES:
            raise ValueError(f"extra_mode must be one of Null/Input/Down/Both, got {extra_mode!r}")
        maps_at_input = self.extra_mode in ("input", "both")
        self.maps_down = self.extra_mode in ("down", "both")

        self.head = nn.Conv2d(in_chn + (extra_chn if maps_at_input else 0), n_feat[0], 3, padding=1)
        extra_down = extra_chn if self.maps_down else 0
        self.down_path = nn.ModuleList()
        for level in range(self.depth):
            last = level == self.depth - 1
            self.down_path.append(DownBlock(n_feat[level], n_feat[level if last else level + 1],
                                            extra_chn=extra_down, n_resblocks=n_resblocks,
                                            downsample=not last))
        self.up_path = nn.ModuleList(
            [UpBlock(n_feat[level + 1], n_feat[level], n_resblocks)
             for level in reversed(range(self.depth - 1))])
        self.tail = nn.Conv2d(n_feat[0], out_chn, kernel_size=3, padding=1)

    @property
    def pad_multiple(self) -> int:
        """Inputs are reflect-padded to sides that are multiples of this: 2**(depth - 1)."""
        return 2 ** (self.depth - 1)

    def forward(self, x_in: torch.Tensor, extra_maps_in: Optional[torch.Tensor]) -> torch.Tensor:
        h, w = x_in.shape[-2:]
        multiple = self.pad_multiple
        x = pad_to_multiple(x_in, multiple)
        extra_maps = None
        if self.extra_mode != "null":
            extra_maps = pad_to_multiple(extra_maps_in, multiple)

        x = self.head(torch.cat([x, extra_maps], 1) if self.extra_mode in ("input", "both") else x)

        bridges: List[torch.Tensor] = []
        level_maps = extra_maps if self.maps_down else None
        for level, down in enumerate(self.down_path):
            x, before_down = down(x, level_maps)
            if level < self.depth - 1:
                bridges.append(before_down)
                if self.maps_down:
                    level_maps = F.interpolate(extra_maps, size=x.shape[-2:], mode="nearest")
        for up, bridge in zip(self.up_path, reversed(bridges)):
            x = up(x, bridge)
        return self.tail(x)[..., :h, :w] + x_in
