"""Randomness for training: per-sample generators and the global RNG states of a process.

Training samples never read a global RNG. Each one draws from its own NumPy generator, seeded
by (run seed, epoch, sample index), so a sample is the same whichever process, DataLoader
worker or resumed run produces it. The global Python / NumPy / torch (/ CUDA) states are only
used by training steps that need randomness; they are seeded per rank and saved in checkpoints.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of training sample ``index`` in ``epoch`` of a run seeded with ``seed``.

    All three are non-negative integers. Generators for different triples are independent
    streams (NumPy ``SeedSequence`` over the triple).
    """
    return np.random.default_rng([seed, epoch, index])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """The global RNG states of this process as plain Python values and uint8 tensors.

    Keys: 'python', 'numpy', 'torch' and, when CUDA is initialised, 'cuda' (one tensor per
    visible device) and 'cuda_current' (the index of the device this process computes on). The
    result survives ``torch.save`` / ``torch.load(weights_only=True)``.
    """
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "key": key.tolist(), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
        state["cuda_current"] = torch.cuda.current_device()
    return state


def set_rng_state(state: dict) -> str | None:
    """Restore states returned by ``get_rng_state``; returns a one-line note of the CUDA states
    that found no device here, else None.

    The CUDA part only where CUDA is in use: the saving process's own device's state goes to this
    process's current device (a run saved with 4 GPUs visible resumes where a scheduler shows each
    process only its own, and the other way round); every other saved state goes to the device of
    its index when that is visible and not the current one, and the rest are dropped (a process
    draws only on its own device, so resume stays exact). States saved without 'cuda_current' are
    restored by index.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" not in state or not torch.cuda.is_available():
        return None
    saved, count = list(state["cuda"]), torch.cuda.device_count()
    own = state.get("cuda_current")
    current = torch.cuda.current_device() if own is not None else None
    targets = {index: index for index in range(len(saved)) if index < count and index != current}
    if own is not None and own < len(saved):
        targets[own] = current
    for index, device in targets.items():
        torch.cuda.set_rng_state(saved[index], device)
    dropped = [index for index in range(len(saved)) if index not in targets]
    if not dropped:
        return None
    return (f"the CUDA RNG state(s) of GPU {', '.join(map(str, dropped))} of the {len(saved)} saved were not "
            f"restored: {count} CUDA device(s) visible here")
