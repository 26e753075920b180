"""Faster fp32 inference for the VIRNet networks, same arithmetic up to float rounding.

``optimize_for_inference(net, device)`` returns an eval-mode copy of ``net`` on ``device`` with
two rewrites; parameters, buffers and state-dict keys are unchanged (each rewritten module only
changes class to a subclass that adds no state), so checkpoints load into the copy as well.

1. Fast-algorithm 3x3 convolutions on the CPU. Every 3x3, stride-1, undilated, ungrouped,
   zero-padded ``nn.Conv2d`` with a bias runs through NNPACK instead of oneDNN's direct
   convolution. NNPACK picks the algorithm from the map size: FFT over 16x16 tiles (14x14
   outputs each) for the larger maps, Winograd F(6x6, 3x3) for maps up to about 32x32. Both
   take far fewer multiplications than the direct convolution, and work on NCHW in and out,
   without oneDNN's layout reorders around each convolution. These layers hold nearly all of the
   networks' arithmetic. Results differ from the direct convolution by float rounding only
   (about 1e-6 relative per layer; measured end to end by ``bench/inference.py``). Applied only
   when PyTorch is built with NNPACK; a layer falls back to the ordinary convolution for inputs
   that are not float32 on the CPU, under autocast, and inside ``torch.compile`` (which has no
   shape function for the NNPACK operator). NNPACK sizes its thread pool from
   ``torch.get_num_threads()`` at its first convolution; set the thread count before.
2. One-pixel attention layers when the conditioning maps are constant over space. In the SR
   model the R-Net's maps are the K-Net's kernel estimate and, with ``noise_avg``, the pooled
   noise level: one value per channel, broadcast over the image (padding and nearest resizing
   keep them constant). Each ``AttLayer`` (1x1 convolutions only) then gives the same value at
   every pixel, so it is computed on one pixel and broadcast by the block's ``fea * mul + add``.

Meant for inference: run the copy under ``torch.inference_mode()``. The demos' ``--fast`` (the
``fast`` backend of ``utils.inference.backends``) runs it.
"""
import copy
from typing import Optional, Union

import torch
from torch import nn

from networks.attresunet import AttLayer
from networks.virnet import VIRAttResUNetSR


class NNPACKConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3x3, stride 1, bias) whose float32 CPU forward runs through NNPACK."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.compiler.is_compiling() or x.device.type != "cpu" or x.dtype != torch.float32
                or self.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        return torch._nnpack_spatial_convolution(x.contiguous(), self.weight, self.bias,
                                                 list(self.padding))


class PointAttLayer(AttLayer):
    """An ``AttLayer`` for spatially constant maps: computed on the top-left pixel only; its
    N x C x 1 x 1 outputs broadcast over the features."""

    def forward(self, extra_maps: torch.Tensor):
        return super().forward(extra_maps[..., :1, :1])


def nnpack_eligible(module: nn.Module) -> bool:
    """Whether ``module`` is a plain ``nn.Conv2d`` that ``NNPACKConv2d`` computes."""
    return (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.dilation == (1, 1) and module.groups == 1 and module.bias is not None
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def has_constant_maps(net: nn.Module) -> bool:
    """Whether the R-Net conditioning maps of ``net`` are constant over space (SR model whose
    noise level is pooled, or not used)."""
    return isinstance(net, VIRAttResUNetSR) and (net.noise_avg or not net.noise_cond)


def optimize_for_inference(net: nn.Module,
                           device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """An eval-mode copy of ``net`` on ``device`` (default: where ``net`` is) with the rewrites
    of this module's docstring: NNPACK 3x3 convolutions on the CPU (when PyTorch has NNPACK)
    and one-pixel attention layers when the conditioning maps are constant. ``net`` itself is
    left untouched. Run the copy under ``torch.inference_mode()``."""
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    fast = copy.deepcopy(net).eval().to(device)
    # is_available() also initialises NNPACK, without which its convolutions fail.
    nnpack = (device.type == "cpu" and hasattr(torch, "_nnpack_spatial_convolution")
              and torch.backends.nnpack.is_available())
    constant_maps = has_constant_maps(fast)
    for module in fast.modules():
        if nnpack and nnpack_eligible(module):
            module.__class__ = NNPACKConv2d
        elif constant_maps and type(module) is AttLayer:
            module.__class__ = PointAttLayer
    return fast
