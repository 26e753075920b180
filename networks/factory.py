"""Building the registered architectures and loading checkpoints strictly."""
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

from .registry import TASKS, task_spec


class CheckpointError(ValueError):
    """A checkpoint (weights or training state) that cannot be read or does not fit the model; the
    message is one line naming the file. The project's only checkpoint error (reported to the user
    like a ``utils.errors.UserError``; ``networks`` imports nothing of the project)."""


def model_kwargs(task: str, **overrides) -> dict:
    """The released constructor arguments of `task`, with `overrides` replacing some of them."""
    return {**task_spec(task).released, **overrides}


def build_model(task: str, sf: Optional[int] = None, **overrides) -> nn.Module:
    """Build the released configuration of `task` (constructor arguments may be overridden, e.g.
    a narrower `n_feat`). `sf` is accepted for symmetry with the SR scripts: the SR architecture
    is the same for every scale factor. Returns a float32 module on the CPU whose attribute
    `arch = {'task': task, 'kwargs': constructor arguments}` is saved with exported weights so that
    a non-released (e.g. compact) architecture can be rebuilt from its checkpoint."""
    spec = task_spec(task)
    if sf is not None and not spec.scales:
        raise ValueError(f"a scale factor only applies to an SR task, not {task!r}")
    kwargs = model_kwargs(task, **overrides)
    net = spec.model(**kwargs)
    net.arch = {"task": task, "kwargs": kwargs}
    return net


def _shapes(state: Mapping[str, torch.Tensor]) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _released_shapes(task: str) -> Dict[str, tuple]:
    with torch.device("meta"):
        net = build_model(task)
    return _shapes(net.state_dict())


def load_file(path: Union[str, Path]) -> Any:
    """``torch.load`` of a checkpoint file onto the CPU with ``weights_only=True``. Raises
    CheckpointError when the file is missing or cannot be unpickled (corrupt or foreign)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling / zip error means a corrupt or foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None


def read_checkpoint(path: Union[str, Path]) -> dict:
    """Read a checkpoint file into a dict whose 'model_state_dict' holds the weights with any
    'module.' prefix removed. Accepts {'model_state_dict': ...}, {'state_dict': ...} or a bare
    state dict; other entries (e.g. 'arch') are kept. Raises CheckpointError."""
    ckpt = load_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state dict")
    if "model_state_dict" in ckpt:
        state, extra = ckpt["model_state_dict"], {k: v for k, v in ckpt.items() if k != "model_state_dict"}
    elif "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        state, extra = ckpt["state_dict"], {k: v for k, v in ckpt.items() if k != "state_dict"}
    else:
        state, extra = ckpt, {}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} has no tensor state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return {**extra, "model_state_dict": state}


def matching_task(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The registered task whose released key set matches `state` (shapes included), or None."""
    shapes = _shapes(state)
    for task in TASKS:
        if _released_shapes(task) == shapes:
            return task
    keys = set(state)
    for task in TASKS:
        if set(_released_shapes(task)) == keys:
            return task
    return None


def load_checkpoint(net: nn.Module, path: Union[str, Path], ckpt: Optional[dict] = None) -> dict:
    """Load the weights of `path` into `net` strictly (keys and shapes must match exactly).

    `ckpt`: the dict `read_checkpoint(path)` already returned, so that the file is not read
    again (the error messages still name `path`).
    Returns the checkpoint dict (weights under 'model_state_dict', other saved entries kept).
    Raises CheckpointError with one line naming the file, the first missing / unexpected /
    mis-shaped keys and, when the weights fit another released task, that task.
    """
    if ckpt is None:
        ckpt = read_checkpoint(path)
    state = ckpt["model_state_dict"]
    expected = _shapes(net.state_dict())
    got = _shapes(state)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mis_shaped = [k for k in expected if k in got and expected[k] != got[k]]
    if missing or unexpected or mis_shaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label} key(s): {', '.join(keys[:3])}{more}")
        hint = ""
        task = matching_task(state)
        if task is not None:
            hint = f"; these weights are a '{task}' model"
        raise CheckpointError(f"checkpoint {path} does not fit the model: {'; '.join(parts)}{hint}")
    net.load_state_dict(state, strict=True)
    return ckpt
