"""Loading a model for inference: the architecture a checkpoint describes, its weights (strictly),
and one line saying which weights they are."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import networks
from utils.download_weights import released_task_of, verify_released
from utils.errors import UserError


def build_from_checkpoint(task: str, ckpt: dict, path: os.PathLike, sf: Optional[int] = None) -> nn.Module:
    """Build the network that a checkpoint dict (from ``networks.read_checkpoint``) describes.

    A checkpoint may carry ``'arch': {'task': str, 'kwargs': dict}`` (a non-released architecture:
    ``kwargs`` override the released constructor arguments); without it the released architecture
    of ``task`` is built. ``sf``: the scale factor of an SR task. Raises UserError when the entry is
    malformed or names another task.
    """
    arch = ckpt.get("arch")
    if arch is None:
        kwargs = {}
    else:
        if not isinstance(arch, dict) or not isinstance(arch.get("kwargs", {}), dict):
            raise UserError(f"checkpoint {path}: 'arch' must be {{'task': str, 'kwargs': dict}}")
        if arch.get("task", task) != task:
            raise UserError(f"checkpoint {path} holds a '{arch['task']}' model; this demo needs '{task}'")
        kwargs = arch.get("kwargs", {})
    try:
        return networks.build_model(task, sf=sf, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path}: cannot build its architecture: {err}") from None


def describe_weights(net: nn.Module, path: os.PathLike, meta: Optional[dict] = None) -> str:
    """One line naming the weights file, its architecture (released or compact), its parameter
    count and, for model-zoo files written by ``utils.export_weights``, their note and storage."""
    arch = getattr(net, "arch", None) or {}
    task = arch.get("task", "?")
    released = networks.TASKS[task].released if task in networks.TASKS else None
    kind = "released" if released is not None and arch.get("kwargs") == released else "compact"
    count = sum(p.numel() for p in net.parameters()) / 1e6
    text = f"{path} ({kind} {task} architecture, {count:.2f} M parameters"
    if isinstance(meta, dict):
        text += f", stored as {meta['dtype']}" if meta.get("dtype") else ""
        text += f"; {meta['note']}" if meta.get("note") else ""
    return text + ")"


def load_model(task: str, ckpt_path: Optional[str], default_path: os.PathLike, device: torch.device,
               sf: Optional[int] = None) -> nn.Module:
    """Build the model of ``task`` and load its weights strictly; returns it in eval mode on ``device``.

    ``ckpt_path``: a checkpoint file (the authors' released ``.pth`` or one of ours, optionally with
    an 'arch' entry, see ``build_from_checkpoint``); empty or None means ``default_path``. A
    released file in model_zoo/ is first checked by ``utils.download_weights.verify_released``
    (missing: the error names the download command; a SHA-256 other than the recorded one: refused).
    The returned module's ``weights_info`` (``describe_weights``) says which weights it holds.
    Raises UserError (or ``networks.CheckpointError``, one line) on any problem.
    """
    path = Path(ckpt_path or default_path)
    released = released_task_of(path)
    if released is not None:
        verify_released(path, released)
    elif not ckpt_path and not path.is_file():
        raise UserError(f"no checkpoint at {path}: pass --ckpt_path FILE")
    ckpt = networks.read_checkpoint(path)
    net = build_from_checkpoint(task, ckpt, path, sf)
    networks.load_checkpoint(net, path, ckpt)
    net.weights_info = describe_weights(net, path, ckpt.get("meta"))
    return net.eval().to(device)
