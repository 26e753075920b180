"""DnCNN: the S-Net that estimates the (log) noise variance map."""
import torch
from torch import nn


def conv3x3(in_chn: int, out_chn: int, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution, stride 1, 'same' zero padding."""
    return nn.Conv2d(in_chn, out_chn, kernel_size=3, stride=1, padding=1, bias=bias)


class DnCNN(nn.Module):
    """Plain DnCNN (Zhang et al., TIP 2017) with LeakyReLU(0.25) activations.

    Args:
        in_channels: channels of the input image.
        out_channels: channels of the output map.
        dep: depth, i.e. number of convolutions (>= 2).
        num_filters: width of the hidden layers.
        noise_avg: global average pooling of the output (one value per channel).

    Input N x in_channels x H x W; output N x out_channels x H x W (or x 1 x 1 with noise_avg).
    """

    def __init__(self, in_channels: int, out_channels: int, dep: int = 5,
                 num_filters: int = 64, noise_avg: bool = False):
        super().__init__()
        self.conv1 = conv3x3(in_channels, num_filters)
        self.relu = nn.LeakyReLU(0.25, inplace=True)
        layers = []
        for _ in range(dep - 2):
            layers += [conv3x3(num_filters, num_filters), nn.LeakyReLU(0.25, inplace=True)]
        self.mid_layer = nn.Sequential(*layers)
        self.conv_last = conv3x3(num_filters, out_channels)
        self.global_avg = nn.AdaptiveAvgPool2d((1, 1)) if noise_avg else nn.Identity()
        self._initialize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.conv_last(self.mid_layer(x))
        return self.global_avg(x)

    def _initialize(self) -> None:
        gain = nn.init.calculate_gain("leaky_relu", 0.25)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.orthogonal_(module.weight, gain=gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
