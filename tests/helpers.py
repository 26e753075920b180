"""Helpers shared by the test files: a toy regression data set for the engine tests, the environment of a subprocess run, the weights a training run
exported, a demo run on the CPU, a small smooth test image on disk, and a tiny model of any task of
``networks.TASKS`` (so that tests parametrised over the tasks cover a new one by themselves)."""
import os
from pathlib import Path

import cv2
import numpy as np
import torch

import networks
from utils.seeding import sample_rng

ROOT = Path(__file__).resolve().parents[1]


class LinearData(torch.utils.data.Dataset):
    """y = slope * x + offset on float32 tensors of ``shape``; sample i of epoch e drawn from
    ``sample_rng(seed, e, i)`` (standard normal x), as the engine's training sets are."""

    def __init__(self, length: int, seed: int, shape=(1, 4, 4), slope: float = 2, offset: float = 1):
        self.length, self.seed, self.epoch = length, seed, 0
        self.shape, self.slope, self.offset = tuple(shape), slope, offset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        x = sample_rng(self.seed, self.epoch, index).standard_normal(self.shape, dtype=np.float32)
        return torch.from_numpy(x), torch.from_numpy(self.slope * x + self.offset)


def sub_env() -> dict:
    """The environment of a trainer or demo run as a subprocess: one thread, unbuffered output, the
    repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def weights(save_dir: Path, name: str = "model_last.pth") -> dict:
    """The state dict of the export ``models/<name>`` of the run in ``save_dir``."""
    return torch.load(save_dir / "models" / name, weights_only=True)["model_state_dict"]


def demo_runner(main):
    """``run(ckpt, *args)``: the exit code of demo entry point ``main`` on the CPU with weights
    ``ckpt`` and the flags ``args`` (any values, passed as strings)."""
    def run(ckpt, *args) -> int:
        return main(["--ckpt_path", str(ckpt), "--device", "cpu", *map(str, args)])

    return run


def smooth_image(path: Path, h: int = 36, w: int = 44, channels: int = 3, dtype=np.uint8, seed: int = 0,
                 mean: float | None = None) -> Path:
    """Write a smooth random h x w image (a 4 x 4 grid of uniform values, bicubically enlarged) with
    OpenCV (BGR order on disk, any channel count, uint8 or uint16); with ``mean`` its values are
    mean + 0.2 * (grid - 0.5) instead, an image of about that mean in [0, 1]. Returns ``path``."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((4, 4, channels)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    base = base.reshape(h, w, channels)
    if mean is not None:
        base = mean + 0.2 * (base - 0.5)
    im = (np.clip(base, 0, 1) * np.iinfo(dtype).max).astype(dtype)
    cv2.imwrite(str(path), im[:, :, 0] if channels == 1 else im)
    return path


def tiny_architecture(task: str) -> dict:
    """Constructor arguments that make ``task``'s released architecture tiny for fast tests: widths
    8, 12, 16... over as many U-Net levels as released (so the padding multiple stays the released
    one), two-layer S-Net, one residual block per level, a one-block K-Net where there is one."""
    released = networks.TASKS[task].released
    tiny = {"n_feat": [8 + 4 * level for level in range(len(released["n_feat"]))], "dep_S": 2, "n_resblocks": 1,
            "dep_K": 1}
    return {name: value for name, value in tiny.items() if name in released}


def tiny_scale(task: str) -> int | None:
    """A scale factor for an SR task's tests (its largest), None for a denoiser."""
    scales = networks.TASKS[task].scales
    return max(scales) if scales else None
