"""Checkpoint files of the training engine, written atomically.

Two formats:

- training state (``save_training_state`` / ``load_training_state``): a dict with the model,
  optimiser and scheduler states, counters, RNG states and whatever else the engine needs to
  continue a run exactly. Loadable with ``torch.load(weights_only=True)``.
- model export (``export_model``): ``{'model_state_dict': ...}``, the released format, without
  any ``module.`` prefix; ``networks.load_checkpoint`` reads it.

Every file is written to a temporary name beside its target and renamed over it, so a run
killed at any moment leaves either the old or the new file, never a truncated one.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from utils.image_io import atomic_write

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A training checkpoint that cannot be read; the message is one line naming the file."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel`` (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_atomic(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
    return path


def export_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``{'model_state_dict': state}`` (CPU tensors, no DDP prefix) to ``path``, plus the
    model's ``arch`` entry ({'task', 'kwargs'}, set by ``networks.build_model``) when it has one."""
    net = unwrap(model)
    ckpt = {"model_state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if getattr(net, "arch", None) is not None:
        ckpt["arch"] = net.arch
    return save_atomic(ckpt, path)


def save_training_state(state: dict, path: str | os.PathLike) -> Path:
    """Write a training-state dict (see the module docstring) atomically; returns the path."""
    return save_atomic({**state, "format_version": FORMAT_VERSION}, path)


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a file written by ``save_training_state`` onto the CPU.

    Raises ``CheckpointError`` when the file is missing, unreadable or not a training state
    (for example a model-only export).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling and zip errors alike mean an unusable file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or "optimizer" not in state or "format_version" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this engine "
                              f"(a model-only export cannot be resumed; use it to initialise weights)")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']} is not supported "
                              f"(expected {FORMAT_VERSION})")
    return state
