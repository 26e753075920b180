"""The one device resolver of the trainers, the demos and the benchmarks (their ``--device``)."""
from __future__ import annotations

import torch

from utils.errors import UserError

NAMES = "auto, cpu, cuda or cuda:N"


class DeviceError(UserError, ValueError):
    """A device that is unknown or not available here; the message is one line."""


def choose_device(name: str | None = "auto", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The torch device that ``--device name`` means.

    ``name``: 'auto' (or None / ''): CUDA when available, else the CPU; 'cpu'; 'cuda': GPU
    ``local_rank`` (one GPU per process of a DDP run), or the only GPU a process sees when a
    scheduler gives each process its own; 'cuda:N'. ``local_rank`` / ``world_size``: this process
    and the number of processes of a DDP run. Raises ``DeviceError`` for an unknown or absent
    device, or a fixed GPU index when several processes run.
    """
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device: unknown device {name!r} (use {NAMES})") from None
    if device.type == "cpu":
        return device
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


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else 'cpu' (as the results record the machine)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
