"""Pictures of blur kernels for the SR demo: kernels rebuilt from kinfo in the data's orientation,
drawn with their (var1, var2, rho) in the caption.

kinfo = (variance along columns, variance along rows, correlation), variances in HR pixels^2, as
the K-Net estimates it and as ``anisotropic_gaussian`` reports it. The picture uses the 'xy' grid
(``kinfo_to_kernel(..., grid='xy')``), i.e. the orientation in which the data were blurred: a
kernel drawn here looks like the blur it describes (SPEC section 7).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.degradation import kinfo_to_kernel
from utils.image_io import atomic_path

PANEL_INCHES = 3.2
DPI = 120


class KernelPanel(NamedTuple):
    """One kernel of a picture: a title, the k x k kernel (sums to 1) and its kinfo (3,)."""

    title: str
    kernel: np.ndarray
    kinfo: np.ndarray


def kernel_from_kinfo(kinfo: np.ndarray, k_size: int = 21, sf: int = 4, shift: bool = False) -> np.ndarray:
    """The k_size x k_size float64 Gaussian kernel (sum 1) of kinfo (3,) in the data's orientation
    ('xy' grid: var1 along columns, var2 along rows)."""
    info = torch.as_tensor(np.asarray(kinfo, dtype=np.float64)).view(1, 3)
    return kinfo_to_kernel(info, k_size, sf, shift, grid="xy")[0, 0].numpy()


def kinfo_caption(kinfo: np.ndarray) -> str:
    """'(var1, var2, rho) = (a, b, c)' with two decimals (variances in HR pixels^2)."""
    var1, var2, rho = (float(v) for v in kinfo)
    return f"(var1, var2, rho) = ({var1:.2f}, {var2:.2f}, {rho:+.2f})"


def kernel_figure(path: os.PathLike, panels: Sequence[KernelPanel]) -> None:
    """Write a PNG of the kernels side by side, each with its title above and its (var1, var2, rho)
    below; each panel's colours span 0 to its own largest tap, so that shapes compare at a glance.
    The file is written atomically."""
    fig = Figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES + 0.9), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        ax.imshow(panel.kernel, cmap="viridis", vmin=0.0, vmax=float(panel.kernel.max()), interpolation="nearest")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(kinfo_caption(panel.kinfo), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("blur kernel (HR pixels; var1 along x, var2 along y)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
