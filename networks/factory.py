"""Building the released architectures and loading checkpoints strictly."""
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch
from torch import nn

from .virnet import VIRAttResUNet, VIRAttResUNetSR

TASKS = ("denoising-syn", "denoising-real", "sisr")

# Constructor arguments of the three released models (SPEC section 2).
RELEASED_CONFIGS: Dict[str, dict] = {
    "denoising-syn": dict(im_chn=3, sigma_chn=1, n_feat=[96, 192, 288], dep_S=5, n_resblocks=3,
                          noise_cond=True, extra_mode="Input", noise_avg=False),
    "denoising-real": dict(im_chn=3, sigma_chn=3, n_feat=[96, 160, 224, 288], dep_S=8,
                           n_resblocks=3, noise_cond=True, extra_mode="Input", noise_avg=False),
    "sisr": dict(im_chn=3, sigma_chn=1, dep_S=5, dep_K=8, n_feat=[96, 160, 224], n_resblocks=2,
                 extra_mode="Both", noise_avg=True, noise_cond=True, kernel_cond=True),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def model_class(task: str):
    """The network class of a task ('denoising-syn', 'denoising-real' or 'sisr')."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return VIRAttResUNetSR if task == "sisr" else VIRAttResUNet


def model_kwargs(task: str, **overrides) -> dict:
    """The released constructor arguments of `task`, with `overrides` replacing some of them."""
    model_class(task)
    return {**RELEASED_CONFIGS[task], **overrides}


def build_model(task: str, sf: Optional[int] = None, **overrides) -> nn.Module:
    """Build the released configuration of `task` (constructor arguments may be overridden, e.g.
    a narrower `n_feat`). `sf` is accepted for symmetry with the SR scripts: the SR architecture
    is the same for every scale factor. Returns a float32 module on the CPU whose attribute
    `arch = {'task': task, 'kwargs': constructor arguments}` is saved with exported weights so that
    a non-released (e.g. compact) architecture can be rebuilt from its checkpoint."""
    if sf is not None and task != "sisr":
        raise ValueError(f"a scale factor only applies to the 'sisr' task, not {task!r}")
    kwargs = model_kwargs(task, **overrides)
    net = model_class(task)(**kwargs)
    net.arch = {"task": task, "kwargs": kwargs}
    return net


def _shapes(state: Mapping[str, torch.Tensor]) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _released_shapes(task: str) -> Dict[str, tuple]:
    with torch.device("meta"):
        net = build_model(task)
    return _shapes(net.state_dict())


def read_checkpoint(path: Union[str, Path]) -> dict:
    """Read a checkpoint file into a dict whose 'model_state_dict' holds the weights with any
    'module.' prefix removed. Accepts {'model_state_dict': ...}, {'state_dict': ...} or a bare
    state dict; other entries (e.g. 'arch') are kept. Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling / zip error means a corrupt or foreign file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
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
    """The released task whose key set matches `state` (shapes included), or None."""
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
