"""Growing a trained model, wider R-Net levels or more residual blocks per level, without changing
what it computes: a start for training a larger one."""
from typing import Optional, Sequence

import torch
from torch import nn

from .attresunet import AttResBlock
from .factory import build_model


def _place(new: torch.Tensor, old: torch.Tensor, out_dim: int) -> None:
    """Copy `old` into the leading block of `new` and zero the weights from new inputs into old
    outputs (`out_dim`: the output-channel axis of the weight, 0 for Conv2d, 1 for ConvTranspose2d)."""
    old_out, old_in = old.shape[out_dim], old.shape[1 - out_dim]
    index = [slice(None)] * new.dim()
    index[out_dim] = slice(0, old_out)
    index[1 - out_dim] = slice(old_in, None)
    new[tuple(index)] = 0
    index[1 - out_dim] = slice(0, old_in)
    new[tuple(index)] = old


@torch.no_grad()
def widen(net: nn.Module, n_feat: Optional[Sequence[int]] = None, seed: int = 0,
          n_resblocks: Optional[int] = None) -> nn.Module:
    """A copy of `net` (built by ``build_model``, with its ``arch``) whose R-Net has the widths
    `n_feat` (one per level, each at least the old one; None: unchanged) and `n_resblocks` residual
    blocks per level (at least the old number; None: unchanged), and computes the same function.

    Every convolution keeps its trained weights in its leading channels; the weights from a new
    channel into an old one are zero, and the weights into a new channel keep the default random
    initialisation (drawn with `seed`), so the new channels carry features that nothing reads yet
    and training can put them to use. Added blocks follow a level's trained ones; their last
    convolution starts at zero, so each adds nothing to its input until training moves it (its
    gradient is non-zero from the first step). The S-Net and K-Net are copied unchanged.
    Returns a float32 module on the CPU with ``arch`` updated. Raises ValueError when `n_feat`
    does not have one width per level or narrows a level, or when `n_resblocks` removes blocks.
    """
    arch = getattr(net, "arch", None)
    if not isinstance(arch, dict):
        raise ValueError("only models built by networks.build_model (with an 'arch') can be grown")
    old_feat = list(arch["kwargs"]["n_feat"])
    n_feat = old_feat if n_feat is None else [int(n) for n in n_feat]
    if len(n_feat) != len(old_feat) or any(n < o for n, o in zip(n_feat, old_feat)):
        raise ValueError(f"n_feat {n_feat} must have {len(old_feat)} widths, each at least the trained "
                         f"model's {old_feat}")
    old_blocks = len(net.RNet.down_path[0].body)
    n_resblocks = old_blocks if n_resblocks is None else int(n_resblocks)
    if n_resblocks < old_blocks:
        raise ValueError(f"n_resblocks {n_resblocks} must be at least the trained model's {old_blocks}")
    extra = {"sf": arch["sf"]} if "sf" in arch else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        grown = build_model(arch["task"], **extra, **{**arch["kwargs"], "n_feat": n_feat, "n_resblocks": n_resblocks})
    old_modules = dict(net.named_modules())
    for name, module in grown.named_modules():
        old = old_modules.get(name)
        if old is None:
            if isinstance(module, AttResBlock):
                module.conv2.weight.zero_()
                module.conv2.bias.zero_()
            continue
        for key, value in module.named_parameters(recurse=False):
            old_value = getattr(old, key).detach().float()
            if value.shape == old_value.shape:
                value.copy_(old_value)
            elif key == "bias":
                value[:old_value.shape[0]] = old_value
            elif key == "weight" and isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                _place(value, old_value, 1 if isinstance(module, nn.ConvTranspose2d) else 0)
            else:
                raise ValueError(f"cannot widen {name}.{key} ({type(module).__name__})")
    return grown
