"""LPIPS (Zhang et al., CVPR 2018) with AlexNet features, as the reference's SR test reports it,
when the ``lpips`` package and its weights are available here.

The reference scores the uint8 RGB restoration against the uint8 ground truth, whole images (no
border), both mapped to [-1, 1]. ``lpips`` builds AlexNet through torchvision, whose pretrained
weights come from torch.hub's cache (downloaded on first use); when the package or those weights are
missing, ``lpips_scorer`` says why instead of trying the network, and the protocols leave the
column out.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from utils.errors import one_line
from utils.image_io import to_uint8

Scorer = Callable[[np.ndarray, np.ndarray], float]


def alexnet_weights_file() -> Optional[Path]:
    """Where torch.hub keeps the AlexNet weights that ``lpips`` loads, or None without torchvision."""
    try:
        from torchvision.models import AlexNet_Weights
    except ImportError:
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name


def lpips_scorer(device: torch.device) -> tuple[Optional[Scorer], str]:
    """(score, '') with ``score(image, gt)`` the LPIPS distance (AlexNet) of two H x W x 3 RGB images
    (uint8, or float in [0, 1], quantised to uint8 first), computed on ``device``; or (None, why
    not) when the ``lpips`` package or its weights are not available."""
    try:
        import lpips
    except ImportError:
        return None, "the lpips package is not installed (pip install lpips)"
    weights = alexnet_weights_file()
    if weights is not None and not weights.is_file():
        return None, (f"the AlexNet weights lpips needs are not in {weights.parent} (torchvision fetches them "
                      f"once online)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = lpips.LPIPS(net="alex", verbose=False).eval().to(device)
    except Exception as err:  # a damaged weights file, an incompatible lpips version
        return None, f"lpips could not load its AlexNet model ({one_line(err)})"

    def score(image: np.ndarray, gt: np.ndarray) -> float:
        with torch.inference_mode():
            return float(model(_as_input(image, device), _as_input(gt, device)).item())

    return score, ""


def _as_input(im: np.ndarray, device: torch.device) -> torch.Tensor:
    """An H x W x 3 RGB image as LPIPS reads it: 1 x 3 x H x W float32 in [-1, 1] from its uint8 values."""
    values = to_uint8(im)
    x = torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32))[None]
    return (x / 127.5 - 1.0).to(device)
