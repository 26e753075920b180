"""How a loaded model runs: the one seam where inference backends plug in.

A backend wraps an eval-mode model on its device and offers what ``Restorer`` and tiled inference
(``tiling``) use, nothing else:

- ``outputs``: the names of the model outputs (the model's ``OUTPUTS``), ``pad_multiple``: the
  side multiple inputs are padded to, ``device``: where it runs;
- ``backend(x, *args)``: the outputs for ``x`` (1 x C x h x w float32 CPU tensor; ``args`` the
  scale factor for SR), as float32 CPU tensors, without autograd;
- ``backend.pinned(x, *args)``: a context in which the estimates the model makes from the whole
  image (``whole_image_estimators``: the K-Net, a pooled S-Net) are computed once on ``x`` and
  reused by every call, so that tiled windows share them.

``eager`` runs the PyTorch module (float32, or bfloat16 autocast with channels-last weights and
inputs with ``precision='bf16'``), pinning the estimators with forward hooks. ``fast`` is ``eager``
on the ``utils.inference.fast`` rewrite of the model. ``onnx`` runs an exported ``.onnx`` file with
ONNX Runtime (``onnx_backend``: the estimators are a graph of their own, whose outputs feed the
restoring graph). A new backend implements the same four members and is added to ``BACKENDS``; the
demos' ``--backend`` offers every entry, and ``auto.plan_run`` chooses among them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from utils.errors import UserError

from .fast import optimize_for_inference
from .onnx_backend import OnnxBackend

PRECISIONS = ("fp32", "bf16")


def precision_context(device: torch.device, precision: str):
    """The autocast context for ``precision`` ('fp32': none; 'bf16': bfloat16 autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class EagerBackend:
    """The PyTorch module ``net`` (eval mode, on its device) at ``precision`` (see the module
    docstring). With 'bf16' the weights of ``net`` itself are switched to channels-last (values
    unchanged; no copy of the model is made). Raises UserError for an unknown precision."""

    def __init__(self, net: nn.Module, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r} (use {' or '.join(PRECISIONS)})")
        self.device = next(net.parameters()).device
        self.precision = precision
        self.channels_last = precision == "bf16"  # faster in bf16 on CUDA and on CPUs with bf16 units
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        self.outputs, self.pad_multiple = net.OUTPUTS, net.pad_multiple

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, in channels-last memory format when the backend uses it."""
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, x: torch.Tensor, *args) -> tuple[torch.Tensor, ...]:
        """The model's outputs for ``x`` (1 x C x h x w, float32, CPU) as float32 CPU tensors."""
        with torch.inference_mode(), precision_context(self.device, self.precision):
            return tuple(o.float().cpu() for o in self.net(self._input(x), *args))

    @contextlib.contextmanager
    def pinned(self, x: torch.Tensor, *args) -> Iterator[None]:
        """Within the block, each whole-image estimator returns its output on ``x`` (forward
        hooks, removed on exit); ``args`` (the forward's other arguments) do not reach them."""
        handles = []
        try:
            with torch.inference_mode(), precision_context(self.device, self.precision):
                whole = self._input(x)
                for module in self.net.whole_image_estimators().values():
                    value = module(whole)
                    handles.append(module.register_forward_hook(lambda _m, _i, _o, v=value: v))
            yield
        finally:
            for handle in handles:
                handle.remove()


class FastBackend(EagerBackend):
    """``EagerBackend`` on an ``optimize_for_inference`` copy of ``net`` (NNPACK 3x3 convolutions
    on the CPU, one-pixel SR attention; fp32, outputs within 4e-5 of eager as measured, docs/benchmarks.md)."""

    def __init__(self, net: nn.Module, precision: str = "fp32"):
        super().__init__(optimize_for_inference(net), precision)


BACKENDS = {"eager": EagerBackend, "fast": FastBackend, "onnx": OnnxBackend}
"""Backend name (the demos' ``--backend``) -> class taking (model, precision): an eval-mode PyTorch
model for ``eager`` and ``fast``, an ``onnx_backend.OnnxModel`` for ``onnx``."""
