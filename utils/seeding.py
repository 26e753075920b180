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
    device). The result survives ``torch.save`` / ``torch.load(weights_only=True)``.
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
    return state


def set_rng_state(state: dict) -> None:
    """Restore states returned by ``get_rng_state`` (the CUDA part only where CUDA is in use)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
