"""Loading a model for inference: the architecture a checkpoint describes, its weights (strictly),
and one line saying which weights they are."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import networks
from utils.config import ConfigError, Key, coerce
from utils.download_weights import released_task_of, verify_released
from utils.errors import UserError

from .tiling import DEFAULT_TILE

MAX_PAD_MULTIPLE = DEFAULT_TILE // 4
"""The deepest network the demos run pads inputs to multiples of this (the default tile holds four)."""


def _arch_kwargs(task: str, arch: object, path: os.PathLike) -> dict:
    """The constructor arguments of a checkpoint's ``arch`` entry, each checked against the task's
    architecture config keys (``networks.architecture_keys``). Raises UserError naming the entry."""
    if not isinstance(arch, dict) or not isinstance(arch.get("kwargs", {}), dict):
        raise UserError(f"checkpoint {path}: 'arch' must be {{'task': str, 'kwargs': dict}}")
    if arch.get("task", task) != task:
        raise UserError(f"checkpoint {path} holds a '{arch['task']}' model; this demo needs '{task}'")
    kwargs = arch.get("kwargs", {})
    schema = networks.architecture_keys(task)
    for name, value in kwargs.items():
        if name in schema:
            try:
                coerce(name, Key(**schema[name]), value)
            except ConfigError as err:
                reason = str(err).removeprefix(f"config key {name!r}: ")
                raise UserError(f"checkpoint {path}: its 'arch' entry is not a valid {task} architecture "
                                f"({name}: {reason})") from None
    return kwargs


def build_from_checkpoint(task: str, ckpt: dict, path: os.PathLike, sf: Optional[int] = None) -> nn.Module:
    """Build the network that a checkpoint dict (from ``networks.read_checkpoint``) describes.

    A checkpoint may carry ``'arch': {'task': str, 'kwargs': dict}`` (a non-released architecture:
    ``kwargs`` override the released constructor arguments); without it the released architecture
    of ``task`` is built. ``sf``: the scale factor of an SR task. Raises UserError naming the entry
    when it is malformed, names another task, or describes a network deeper than the demos run
    (inputs padded to multiples of more than ``MAX_PAD_MULTIPLE``).
    """
    kwargs = {} if ckpt.get("arch") is None else _arch_kwargs(task, ckpt["arch"], path)
    try:
        net = networks.build_model(task, sf=sf, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path}: cannot build its architecture: {err}") from None
    if net.pad_multiple > MAX_PAD_MULTIPLE:
        raise UserError(f"checkpoint {path}: its 'arch' entry describes a network that pads its input to "
                        f"multiples of {net.pad_multiple}; the demos run networks padding to at most "
                        f"{MAX_PAD_MULTIPLE} - the entry is likely damaged")
    return net


def recorded_scale(ckpt: dict, path: os.PathLike) -> tuple[Optional[int], str]:
    """The scale factor an SR checkpoint was trained for and where that comes from: its 'arch'
    entry's 'sf' (written by this project's trainers and exporter), else an 'x2' / 'x3' / 'x4' in
    the file name (the authors' released files), else (None, '')."""
    arch = ckpt.get("arch")
    if isinstance(arch, dict) and isinstance(arch.get("sf"), int):
        return arch["sf"], "its 'arch' entry"
    match = re.search(r"(?<![a-z0-9])x([2-8])(?![0-9])", Path(path).name.lower())
    return (int(match[1]), "its file name") if match else (None, "")


def check_scale(ckpt: dict, path: os.PathLike, sf: int) -> str:
    """Refuse (UserError) SR weights trained for another scale than ``sf`` (``recorded_scale``);
    returns a note for the weights line when the checkpoint does not tell its scale, else ''."""
    recorded, where = recorded_scale(ckpt, path)
    if recorded is None:
        return f"its scale is not recorded: make sure it was trained for x{sf}"
    if recorded != sf:
        raise UserError(f"checkpoint {path} holds x{recorded} weights ({where} says so); run with --sf {recorded} "
                        f"or pass x{sf} weights with --ckpt_path")
    return ""


def check_finite(net: nn.Module, path: os.PathLike) -> None:
    """Refuse (UserError) weights holding NaN or infinite values, the mark of a diverged training run."""
    bad = [name for name, value in net.state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserError(f"checkpoint {path}: weights hold NaN or infinite values ({bad[0]}{more}); the training "
                        f"run that wrote them diverged - use an earlier checkpoint")


def describe_weights(net: nn.Module, path: os.PathLike, meta: Optional[dict] = None, note: str = "") -> str:
    """One line naming the weights file, its architecture (released or compact), its parameter
    count, for model-zoo files written by ``utils.export_weights`` their note and storage, and
    ``note`` when given."""
    arch = getattr(net, "arch", None) or {}
    task = arch.get("task", "?")
    released = networks.TASKS[task].released if task in networks.TASKS else None
    kind = "released" if released is not None and arch.get("kwargs") == released else "compact"
    count = sum(p.numel() for p in net.parameters()) / 1e6
    text = f"{path} ({kind} {task} architecture, {count:.2f} M parameters"
    if isinstance(meta, dict):
        text += f", stored as {meta['dtype']}" if meta.get("dtype") else ""
        text += f"; {meta['note']}" if meta.get("note") else ""
    return text + (f"; {note}" if note else "") + ")"


def load_model(task: str, ckpt_path: Optional[str], default_path: os.PathLike, device: torch.device,
               sf: Optional[int] = None) -> nn.Module:
    """Build the model of ``task`` and load its weights strictly; returns it in eval mode on ``device``.

    ``ckpt_path``: a checkpoint file (the authors' released ``.pth`` or one of ours, optionally with
    an 'arch' entry, see ``build_from_checkpoint``); empty or None means ``default_path``. A
    released file in model_zoo/ is first checked by ``utils.download_weights.verify_released``
    (missing: the error names the download command; a SHA-256 other than the recorded one: refused).
    SR weights trained for another scale than ``sf`` (``check_scale``) and weights holding NaN or
    infinite values (``check_finite``) are refused. The returned module's ``weights_info``
    (``describe_weights``) says which weights it holds.
    Raises UserError (or ``networks.CheckpointError``, one line) on any problem.
    """
    path = Path(ckpt_path or default_path)
    released = released_task_of(path)
    if released is not None:
        verify_released(path, released)
    elif not ckpt_path and not path.is_file():
        raise UserError(f"no checkpoint at {path}: pass --ckpt_path FILE")
    ckpt = networks.read_checkpoint(path)
    note = check_scale(ckpt, path, sf) if sf is not None else ""
    net = build_from_checkpoint(task, ckpt, path, sf)
    networks.load_checkpoint(net, path, ckpt)
    check_finite(net, path)
    net.weights_info = describe_weights(net, path, ckpt.get("meta"), note)
    return net.eval().to(device)


def task_of_checkpoint(ckpt: dict, path: os.PathLike) -> str:
    """The registered task a checkpoint dict (from ``networks.read_checkpoint``) holds: its 'arch'
    entry's 'task' (this project's trainers and exporter write it), else the released task whose keys
    and shapes its weights have (the authors' files). Raises UserError when neither tells it."""
    arch = ckpt.get("arch")
    if isinstance(arch, dict) and arch.get("task") in networks.TASKS:
        return arch["task"]
    task = networks.matching_task(ckpt["model_state_dict"])
    if task is None:
        raise UserError(f"checkpoint {path}: cannot tell its task (no 'arch' entry, and its weights fit no "
                        f"released architecture: {', '.join(networks.TASKS)})")
    return task


def load_model_file(path: os.PathLike, device: torch.device | str = "cpu", sf: Optional[int] = None) -> nn.Module:
    """Load any weights file the demos load (the shipped compact ``.safetensors``, the authors'
    released ``.pth``, an export of our trainers) into the architecture it describes, in eval mode.

    The task comes from the file (``task_of_checkpoint``); for SR the scale ``sf`` defaults to the
    one the file records (``recorded_scale``: its 'arch' entry or an 'x4' in its name), and must be
    given when it records none. Then as ``load_model`` (strict weights, NaN checks, the released
    files' SHA-256). The returned module has ``arch`` (``{'task', 'kwargs'[, 'sf']}``) and
    ``weights_info``. Raises UserError or ``networks.CheckpointError`` (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    ckpt = networks.read_checkpoint(path)
    task = task_of_checkpoint(ckpt, path)
    if networks.task_spec(task).scales and sf is None:
        sf = recorded_scale(ckpt, path)[0]
        if sf is None:
            raise UserError(f"checkpoint {path}: its scale is not recorded; pass sf=2, 3 or 4")
    return load_model(task, str(path), path, torch.device(device), sf)
