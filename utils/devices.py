"""The one device resolver of the trainers, the demos and the benchmarks (their ``--device``)."""
from __future__ import annotations

import torch

from utils.errors import UserError

NAMES = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(UserError, ValueError):
    """A device that is unknown or not available here; the message is one line."""


def choose_device(name: str | None = "auto", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The torch device that ``--device name`` means.

    ``name``: 'auto' (or None / ''): CUDA when available, else Apple's MPS (a Mac's GPU) when
    available, else the CPU; 'cpu'; 'cuda': GPU ``local_rank`` (one GPU per process of a DDP run),
    or the only GPU a process sees when a scheduler gives each process its own; 'cuda:N'; 'mps'
    (float32; one process). ``local_rank`` / ``world_size``: this process and the number of
    processes of a DDP run. Raises ``DeviceError`` for an unknown or absent device, a fixed GPU
    index when several processes run, or MPS in a run of several processes.
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
    index = device.index if device.index is not None else (0 if count == 1 else local_rank)
    if index >= count:
        raise DeviceError(f"--device {name}: GPU {index} asked for, but only {count} CUDA device(s) are visible")
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
