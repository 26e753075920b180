"""Building the registered architectures and loading checkpoints strictly."""
import json
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from safetensors import safe_open
from torch import nn

from .registry import TASKS, task_spec


class CheckpointError(ValueError):
    """A checkpoint (weights or training state) that cannot be read or does not fit the model; the
    message is one line naming the file. The project's only checkpoint error (reported to the user
    like a ``utils.errors.UserError``, which ``user_facing`` tells it; ``networks`` imports nothing
    of the project)."""

    user_facing = True


def model_kwargs(task: str, **overrides) -> dict:
    """The released constructor arguments of `task`, with `overrides` replacing some of them."""
    return {**task_spec(task).released, **overrides}


def build_model(task: str, sf: Optional[int] = None, **overrides) -> nn.Module:
    """Build the released configuration of `task` (constructor arguments may be overridden, e.g.
    a narrower `n_feat`). `sf` is accepted for symmetry with the SR scripts: the SR architecture
    is the same for every scale factor. Returns a float32 module on the CPU whose attribute
    `arch = {'task': task, 'kwargs': constructor arguments}` is saved with exported weights so that
    a non-released (e.g. compact) architecture can be rebuilt from its checkpoint; with `sf` it
    also holds 'sf', the scale the weights are (or will be) trained for."""
    spec = task_spec(task)
    if sf is not None and not spec.scales:
        raise ValueError(f"a scale factor only applies to an SR task, not {task!r}")
    kwargs = model_kwargs(task, **overrides)
    net = spec.model(**kwargs)
    net.arch = {"task": task, "kwargs": kwargs, **({"sf": sf} if sf is not None else {})}
    return net


def _shapes(state: Mapping[str, torch.Tensor]) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _released_shapes(task: str) -> Dict[str, tuple]:
    with torch.device("meta"):
        net = build_model(task)
    return _shapes(net.state_dict())


_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
"""How the files of ``torch.save`` start: a zip archive, or (before PyTorch 1.6) a pickled magic number."""


def _not_a_checkpoint(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a ``torch.save`` file, judged from its first bytes (an empty file,
    a plain pickle: the PROTO opcode then a protocol number 2-5, other data), or None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not head:
        return f"cannot read checkpoint {path}: empty file (0 bytes), never written completely; use another copy"
    if head.startswith(_ZIP_MAGIC) or head == _LEGACY_MAGIC:
        return None
    pickled = len(head) > 1 and head[0] == pickle.PROTO[0] and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL
    kind = "a plain Python pickle" if pickled else "neither a torch.save file nor a pickle"
    return f"cannot read checkpoint {path}: not a PyTorch checkpoint ({kind}); pass a file written by torch.save"


def load_file(path: Union[str, Path]) -> Any:
    """``torch.load`` of a checkpoint file onto the CPU with ``weights_only=True`` (tensors and plain
    values only). Raises CheckpointError, one line naming the file, when it is missing, empty, not a
    ``torch.save`` file, truncated or damaged, or holds Python objects besides tensors (whose
    unpickling could run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    problem = _not_a_checkpoint(path)
    if problem:
        raise CheckpointError(problem)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise CheckpointError(f"cannot read checkpoint {path}: damaged (it cannot be unpickled); use another copy") from None
        raise CheckpointError(f"cannot read checkpoint {path}: it holds Python objects besides tensors (e.g. a whole "
                              f"model saved with torch.save(model)), not loaded because unpickling them can run "
                              f"code; save its state_dict() instead") from None
    except Exception:  # any zip / storage error: a damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or damaged PyTorch file; use another "
                              f"copy") from None


SAFETENSORS_SUFFIX = ".safetensors"
"""Files with this suffix are read as safetensors (tensors only; reading runs no code)."""
SAFETENSORS_ENTRIES = ("arch", "meta")
"""Checkpoint entries a safetensors file keeps as JSON strings in its metadata (beside 'format': 'pt')."""


def read_safetensors(path: Union[str, Path]) -> dict:
    """A safetensors weights file as a checkpoint dict: its tensors under 'model_state_dict' (on the
    CPU) and the ``SAFETENSORS_ENTRIES`` its metadata holds, decoded from JSON. Raises
    CheckpointError, one line naming the file, when it is missing, damaged or its metadata is not JSON."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception:  # the header or the data do not parse: a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or damaged safetensors file; use another "
                              f"copy") from None
    ckpt = {"model_state_dict": state}
    for key in SAFETENSORS_ENTRIES:
        if key in metadata:
            try:
                ckpt[key] = json.loads(metadata[key])
            except json.JSONDecodeError:
                raise CheckpointError(f"checkpoint {path}: its '{key}' metadata is not JSON") from None
    return ckpt


def read_checkpoint(path: Union[str, Path]) -> dict:
    """Read a checkpoint file into a dict whose 'model_state_dict' holds the weights with any
    'module.' prefix removed. Accepts {'model_state_dict': ...}, {'state_dict': ...} or a bare
    state dict (``torch.save`` files), or a ``.safetensors`` file (``read_safetensors``); other
    entries (e.g. 'arch') are kept. Raises CheckpointError."""
    is_safetensors = Path(path).suffix.lower() == SAFETENSORS_SUFFIX
    ckpt = read_safetensors(path) if is_safetensors else load_file(path)
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
