"""The one device resolver of the trainers, the demos and the benchmarks (their ``--device``), the
one probe of whether a device computes bf16 natively (``native_bf16``: the demos' ``--precision
auto`` and the trainers' ``bf16: auto``), and the one TF32 switch (``set_tf32``)."""
from __future__ import annotations

import functools
import time

import torch

from utils.errors import UserError

NAMES = "auto, cpu, cuda, cuda:N or mps"
BF16_MIN_GAIN = 1.2
"""bf16 counts as native on a CPU only when the timed probe convolution is at least this much faster in bf16."""


BF16_MIN_CAPABILITY = (8, 0)
"""The CUDA compute capability from which a GPU has bf16 units (Ampere)."""


class DeviceError(UserError, ValueError):
    """A device that is unknown or not available here; the message is one line."""


def choose_device(name: str | None = "auto", local_rank: int = 0, world_size: int = 1,
                  local_world_size: int | None = None) -> torch.device:
    """The torch device that ``--device name`` means; a CUDA device also becomes this process's
    current one (``torch.cuda.set_device``), so that nothing opens a context on another GPU.

    ``name``: 'auto' (or None / ''): CUDA when available, else Apple's MPS (a Mac's GPU) when
    available, else the CPU; 'cpu'; 'cuda': GPU ``local_rank`` (one GPU per process of a DDP run),
    or the only GPU a process sees when a scheduler gives each process its own; 'cuda:N'; 'mps'
    (float32; one process). ``local_rank`` / ``world_size``: this process and the number of
    processes of a DDP run; ``local_world_size``: the processes on this node that share its visible
    GPUs (torchrun's LOCAL_WORLD_SIZE; None where each process may see its own, e.g. under srun).
    Raises ``DeviceError`` for an unknown or absent device, a fixed GPU index when several
    processes run, more processes on this node than visible GPUs (they would share one, which
    NCCL refuses), or MPS in a run of several processes.
    """
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device: unknown device {name!r} (use {NAMES})") from None
    if device.type == "cpu":
        return device
    if device.type == "mps":
        return _mps(name, world_size)
    if device.type != "cuda":
        raise DeviceError(f"--device: unsupported device {name!r} (use {NAMES})")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available here (use --device cpu)")
    count = torch.cuda.device_count()
    if device.index is not None and world_size > 1:
        raise DeviceError(f"--device {name}: with several processes pass --device cuda (process i takes GPU i; "
                          f"choose GPUs with CUDA_VISIBLE_DEVICES)")
    if device.index is None and world_size > 1 and (local_world_size or 0) > count:
        raise DeviceError(f"--device {name}: {local_world_size} processes on this node but {count} CUDA device(s) "
                          f"visible; DDP needs one GPU per process: start at most {count} per node "
                          f"(torchrun --nproc_per_node={count}) or make more GPUs visible")
    index = device.index if device.index is not None else (0 if count == 1 else local_rank)
    if index >= count:
        raise DeviceError(f"--device {name}: GPU {index} asked for, but only {count} CUDA device(s) are visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def mps_available() -> bool:
    """Whether this PyTorch build has Apple's Metal Performance Shaders backend and a Mac GPU for it."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _mps(name: str, world_size: int) -> torch.device:
    """The MPS device for ``--device name``; raises ``DeviceError`` when it is absent or several
    processes would share it (DDP has no MPS backend)."""
    if not mps_available():
        raise DeviceError(f"--device {name}: Apple MPS is not available here (it needs a Mac with "
                          f"Apple silicon or an AMD GPU and a PyTorch build with MPS; use --device cpu)")
    if world_size > 1:
        raise DeviceError(f"--device {name}: DDP does not run on MPS; start one process")
    return torch.device("mps")


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, 'Apple MPS' for a Mac's GPU, else 'cpu' (as the results
    record the machine)."""
    if device.type == "mps":
        return "Apple MPS"
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def set_tf32(enabled: bool) -> None:
    """Let CUDA float32 matrix products and cuDNN convolutions run in TF32 (``enabled``), or keep
    them in IEEE float32 (``False``: the fp32 protocols, conformance and fp32 baselines).

    TF32 keeps float32's range with a 10-bit mantissa (about 1e-3 relative error per product) and
    runs on Ampere and later GPUs only; elsewhere, and on CPUs, the switch changes nothing.
    PyTorch leaves cuDNN convolutions in TF32 unless told otherwise. Sets the two process-wide
    ``allow_tf32`` flags (cuBLAS matmul, cuDNN): PyTorch's own code (``torch.export``, hence the
    ONNX export) reads those, and raises once the newer per-operator ``fp32_precision`` settings
    have made cuDNN's convolution and RNN settings differ, so the project never sets the latter.
    """
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def _probe_seconds(conv: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    """Seconds of one call of ``conv`` on ``x``, in bf16 autocast or fp32."""
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        conv(x)
        return time.perf_counter() - start


@functools.lru_cache(maxsize=None)
def cpu_bf16() -> tuple[bool, str]:
    """Whether oneDNN runs bf16 natively on this CPU, and the probe that decided; computed once per process.

    Three probes, cheapest first: the CPU has bf16 units (AVX512-BF16 or AMX); oneDNN offers bf16
    kernels under its instruction-set limit (not under ``ONEDNN_MAX_CPU_ISA=AVX2``, where PyTorch's
    fallback is 10-100x slower than fp32); a timed 3x3 convolution (64 channels, 64 x 64, best of
    4, interleaved) runs at least ``BF16_MIN_GAIN`` times faster in bf16 than in fp32 (oneDNN limited
    to ``AVX512_CORE`` emulates bf16 and is 2-5x slower; CPUs with native units measured 1.8-4.3x
    faster). The timing costs 30-100 ms.
    """
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


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and a short phrase saying why.

    CUDA: the GPU ``device`` names (the current one for plain 'cuda') has compute capability
    ``BF16_MIN_CAPABILITY`` or more (Ampere and later); older GPUs (V100, T4) run bf16 only by
    emulation, slower than fp32, which ``torch.cuda.is_bf16_supported`` counts as support. A CPU:
    ``cpu_bf16``. Anything else (e.g. Apple MPS): no.
    """
    if device.type == "cuda":
        capability = tuple(torch.cuda.get_device_capability(device))
        version = ".".join(map(str, capability))
        if capability >= BF16_MIN_CAPABILITY:
            return True, f"GPU with bf16 units (compute capability {version})"
        return False, f"this GPU (compute capability {version}) has no bf16 units, it would emulate bf16"
    if device.type == "cpu":
        return cpu_bf16()
    return False, f"{device.type} runs fp32"
