"""A model's size and cost as the reference reports them: parameters and FLOPs at 256 x 256.

The reference's test scripts count FLOPs with thop's ``profile`` on a 256 x 256 input (SR: a
256 / sf low-resolution input, so a 256 x 256 output), and thop counts one multiply-accumulate as one
FLOP. ``torch.utils.flop_counter`` counts two FLOPs per multiply-accumulate of the convolutions and
matrix products, so its total is halved here. The count runs on a copy of the model on the 'meta'
device: no arithmetic, no memory, the same on every machine.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

SIDE = 256
"""The output side the FLOPs are counted at (the reference's 'FLOPs for 256')."""


def model_complexity(net: nn.Module, sf: Optional[int] = None, side: int = SIDE) -> dict:
    """{'parameters': count, 'flops_256': multiply-accumulates of one forward pass giving a ``side``
    x ``side`` output (an SR model ``net`` with scale ``sf`` gets a (side // sf)^2 input)}. An exported
    model (``onnx_backend.OnnxModel``) gives the counts recorded at its export."""
    recorded = getattr(net, "complexity", None)
    if recorded is not None and side == SIDE:
        return dict(recorded)
    from torch.utils.flop_counter import FlopCounterMode  # loaded by the protocols only

    meta = copy.deepcopy(net).to("meta")
    size = side // (sf or 1)
    x = torch.empty(1, 3, size, size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x, sf) if sf else meta(x)
    return {"parameters": sum(p.numel() for p in net.parameters()), "flops_256": counter.get_total_flops() // 2}


def complexity_line(info: dict) -> str:
    """'Model: P M parameters, F G FLOPs at 256 x 256 (multiply-accumulates, as thop counts them)'."""
    return (f"Model: {info['parameters'] / 1e6:.2f} M parameters, {info['flops_256'] / 1e9:.2f} G FLOPs at "
            f"{SIDE} x {SIDE} (multiply-accumulates, as the reference's thop counts them)")
