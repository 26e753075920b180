"""How a model runs when nobody says: ``--precision auto`` picks the fastest path this device offers,
by probing the device rather than guessing from its name.

- An exported ``.onnx`` model: ONNX Runtime, fp32 (the only way it runs).
- CUDA with bf16 (``torch.cuda.is_bf16_supported``): bf16 autocast + channels-last, eager PyTorch.
- A CPU on which oneDNN computes bf16 natively: bf16 autocast + channels-last, eager PyTorch.
  ``cpu_bf16`` asks three probes in turn, cheapest first: the CPU has bf16 units (AVX512-BF16 or
  AMX, ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``); oneDNN offers bf16
  kernels under its instruction-set limit (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: False
  under ``ONEDNN_MAX_CPU_ISA=AVX2``, where PyTorch's fallback is about 100x slower than fp32); and a
  timed 3x3 convolution (64 channels, 64 x 64, best of 3, interleaved) runs at least
  ``BF16_MIN_GAIN`` times faster in bf16 than in fp32 (oneDNN limited to ``AVX512_CORE`` emulates
  bf16 and is 2-5x slower than fp32; a CPU with native units measured 1.8-4.3x faster). The timing
  costs 30-100 ms once per process (cached).
- Any other CPU: fp32 through the ``fast`` backend (NNPACK 3x3 convolutions), the fastest fp32 path
  measured on CPUs without bf16 units (``bench/inference.py``: 2.5x eager fp32 and 1.7x ONNX Runtime
  with the released syn architecture on an AMD EPYC with oneDNN and ATen limited to AVX2; README
  "Benchmarks"). ONNX Runtime needs an exported file, so it runs when one is given.
- Apple MPS: fp32, eager PyTorch.

``plan_run`` resolves the precision and backend flags into a ``RunPlan``, whose ``line`` the demos
print. The test protocols default to fp32 eager (the exact numbers) and take ``auto`` when asked.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Optional

import torch

from utils.errors import UserError

from .backends import BACKENDS, PRECISIONS
from .onnx_backend import OnnxModel

CHOICES = ("auto",) + PRECISIONS
"""The values of ``--precision``."""
BF16_MIN_GAIN = 1.2
"""bf16 runs on a CPU only when the timed probe convolution is at least this much faster in bf16."""
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


def _probe_seconds(conv: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    """Seconds of one call of ``conv`` on ``x``, in bf16 autocast or fp32."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        conv(x)
        return time.perf_counter() - start


@functools.lru_cache(maxsize=None)
def cpu_bf16() -> tuple[bool, str]:
    """Whether oneDNN runs bf16 natively on this CPU, and the probe that decided (see the module
    docstring); computed once per process."""
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return False, "no bf16 units (AVX512-BF16 or AMX) on this CPU"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "oneDNN offers no bf16 kernels here (its instruction set is limited)"
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    best = {False: float("inf"), True: float("inf")}
    for bf16 in (False, True) * 4:  # interleaved; the minimum leaves out oneDNN's first, warming-up calls
        best[bf16] = min(best[bf16], _probe_seconds(conv, x, bf16))
    gain = best[False] / best[True]
    if gain < BF16_MIN_GAIN:
        return False, f"a bf16 convolution ran {gain:.2f}x the speed of fp32 here: oneDNN emulates bf16"
    return True, f"CPU with native bf16, a bf16 convolution ran {gain:.1f}x faster than fp32"


def _auto(device: torch.device, backend: Optional[str]) -> RunPlan:
    """The plan of ``--precision auto`` for a PyTorch model on ``device`` (``backend``: the one asked
    for, or None)."""
    if backend not in (None, "eager"):
        return RunPlan("fp32", backend, f"--backend {backend} runs fp32")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        reason = "GPU with bf16" if bf16 else "this GPU has no bf16"
    elif device.type == "cpu":
        bf16, reason = cpu_bf16()
    else:
        bf16, reason = False, f"{device.type} runs fp32"
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
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16()[0]:
        reason += f"; slow here: {cpu_bf16()[1]}"
    return RunPlan(precision, backend or "eager", reason)

