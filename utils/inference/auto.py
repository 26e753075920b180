"""How a model runs when nobody says: ``--precision auto`` picks the fastest path this device offers,
by probing the device rather than guessing from its name.

- An exported ``.onnx`` model: ONNX Runtime, fp32 (the only way it runs).
- CUDA with bf16 (``torch.cuda.is_bf16_supported``): bf16 autocast + channels-last, eager PyTorch.
- A CPU on which oneDNN computes bf16 natively (``utils.devices.cpu_bf16``: bf16 units, oneDNN's
  bf16 kernels, and a timed convolution at least 1.2x faster in bf16; cached per process): bf16
  autocast + channels-last, eager PyTorch.
- Any other CPU: fp32 through the ``fast`` backend (NNPACK 3x3 convolutions), the fastest fp32 path
  measured on CPUs without bf16 units (``bench/inference.py``: 2.5x eager fp32 and 1.7x ONNX Runtime
  with the released syn architecture on an AMD EPYC with oneDNN and ATen limited to AVX2;
  docs/benchmarks.md). ONNX Runtime needs an exported file, so it runs when one is given.
- Apple MPS: fp32, eager PyTorch.

``plan_run`` resolves the precision and backend flags into a ``RunPlan``, whose ``line`` the demos
print. The test protocols default to fp32 eager (the exact numbers) and take ``auto`` when asked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from utils.devices import native_bf16
from utils.errors import UserError

from .backends import BACKENDS, PRECISIONS
from .onnx_backend import OnnxModel

CHOICES = ("auto",) + PRECISIONS
"""The values of ``--precision``."""
DESCRIPTIONS = {"fp32": "fp32", "bf16": "bf16 autocast + channels-last"}
BACKEND_NAMES = {"eager": "eager PyTorch", "fast": "the fast backend (NNPACK 3x3 convolutions)",
                 "onnx": "ONNX Runtime"}


@dataclass(frozen=True)
class RunPlan:
    """How a model runs: ``precision`` ('fp32' or 'bf16'), ``backend`` (a name of
    ``backends.BACKENDS``) and ``reason``, why (a short phrase)."""
    precision: str
    backend: str
    reason: str

    @property
    def line(self) -> str:
        """'run: <precision>, <backend> (<reason>)', the line the demos print."""
        return f"run: {DESCRIPTIONS[self.precision]}, {BACKEND_NAMES[self.backend]} ({self.reason})"


def _auto(device: torch.device, backend: Optional[str]) -> RunPlan:
    """The plan of ``--precision auto`` for a PyTorch model on ``device`` (``backend``: the one asked
    for, or None)."""
    if backend not in (None, "eager"):
        return RunPlan("fp32", backend, f"--backend {backend} runs fp32")
    bf16, reason = native_bf16(device)
    if backend == "eager":
        return RunPlan("bf16" if bf16 else "fp32", backend, f"--backend eager; {reason}")
    if bf16:
        return RunPlan("bf16", "eager", f"auto: {reason}")
    return RunPlan("fp32", "fast" if device.type == "cpu" else "eager", f"auto: {reason}")


def plan_run(net, precision: str = "fp32", backend: Optional[str] = None) -> RunPlan:
    """How ``net`` runs: ``precision`` 'auto', 'fp32' or 'bf16'; ``backend`` a name of
    ``backends.BACKENDS`` or None (auto: chosen with the precision, else 'eager'; 'onnx' for an
    ``OnnxModel``). ``net``: an eval-mode PyTorch model on its device, or an ``OnnxModel``.
    Raises UserError for an unknown choice or one that cannot run ``net`` (bf16 or a PyTorch
    backend for an ONNX model, the ONNX backend for a PyTorch one, bf16 on Apple MPS)."""
    if precision not in CHOICES:
        raise UserError(f"unknown precision {precision!r} (use {', '.join(CHOICES)})")
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r} (use {', '.join(BACKENDS)})")
    if isinstance(net, OnnxModel):
        if precision == "bf16" or backend not in (None, "onnx"):
            raise UserError(f"{net.path} is an ONNX model: it runs with ONNX Runtime in fp32 (drop --precision "
                            f"bf16 and --backend/--fast, or pass a .pth checkpoint)")
        return RunPlan("fp32", "onnx", "an ONNX model runs with ONNX Runtime")
    if backend == "onnx":
        raise UserError("--backend onnx runs an exported .onnx file (python -m utils.export_weights SRC DST.onnx); "
                        "pass it with --ckpt_path")
    device = next(net.parameters()).device
    if precision == "auto":
        return _auto(device, backend)
    if precision == "bf16" and device.type == "mps":
        raise UserError("--precision bf16 is not offered on Apple MPS; use fp32")
    reason = f"--precision {precision}"
    if precision == "bf16" and device.type == "cpu":
        native, why = native_bf16(device)
        if not native:
            reason += f"; slow here: {why}"
    return RunPlan(precision, backend or "eager", reason)

