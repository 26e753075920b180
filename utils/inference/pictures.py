"""Pictures of the demos' results: noise-level heat maps, side-by-side panels and blur kernels.

Figures are drawn with matplotlib's object API on an Agg canvas (no display, no global pyplot
state) and every file is written atomically. matplotlib (and the kernel maths) load when a figure is
drawn, not when this module is imported, so that a run that draws none does not pay for them.

Kernels: kinfo = (variance along columns, variance along rows, correlation), variances in HR
pixels^2, as the K-Net estimates it and as ``anisotropic_gaussian`` reports it. A kernel picture
uses the 'xy' grid (``kinfo_to_kernel(..., grid='xy')``), i.e. the orientation in which the data
were blurred: a kernel drawn here looks like the blur it describes (docs/faithfulness.md).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import cv2
import numpy as np
import torch

from utils.image_io import atomic_path, to_uint8, write_image

HEATMAP_WIDTH_INCHES = 6.0
"""Width of one heat-map panel; the height follows the image's aspect ratio."""
DPI = 120
PANEL_GAP = 8
LABEL_HEIGHT = 28
KERNEL_PANEL_INCHES = 3.2


def _figure(size: tuple[float, float]):
    """A matplotlib Figure of ``size`` inches (DPI, constrained layout) on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # loaded when a figure is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _as_map(std: np.ndarray) -> np.ndarray:
    """An H x W float32 map from H x W or H x W x C (mean over channels) values."""
    std = np.asarray(std, dtype=np.float32)
    return std.mean(axis=2) if std.ndim == 3 else std


def _for_display(values: np.ndarray, max_width: int) -> np.ndarray:
    """Area-downscale a map wider than ``max_width`` pixels (the figure cannot show more detail,
    and plotting a multi-megapixel map would cost gigabytes)."""
    height, width = values.shape
    if width <= max_width:
        return values
    size = (max_width, max(1, round(height * max_width / width)))
    return cv2.resize(values, size, interpolation=cv2.INTER_AREA)


def noise_heatmap(path: os.PathLike, std_255: np.ndarray, true_std_255: Optional[np.ndarray] = None,
                  title: str = "estimated noise std") -> None:
    """Write a PNG heat map of a noise standard-deviation map with a colour bar in 0-255 units.

    ``std_255``: H x W or H x W x C (channels averaged) noise std on the 0-255 scale.
    ``true_std_255``: optional ground-truth map of the same size, drawn beside it on the same
    colour scale (quick-look mode, where the synthetic noise is known). The colour range and the
    means in the titles come from the full-resolution maps; large maps are shown area-downscaled.
    """
    maps = [(title, _as_map(std_255))]
    if true_std_255 is not None:
        maps.append(("true noise std", _as_map(true_std_255)))
    height, width = maps[0][1].shape
    vmax = max(float(m.max()) for _, m in maps)
    vmin = min(float(m.min()) for _, m in maps)
    if vmax - vmin < 1e-6:  # a constant map (pooled estimate): centre it in a visible range
        vmin, vmax = vmin - 1.0, vmax + 1.0
    fig = _figure((HEATMAP_WIDTH_INCHES * len(maps) + 1.2, HEATMAP_WIDTH_INCHES * height / width + 0.6))
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (label, values) in zip(axes, maps):
        shown = _for_display(values, 2 * round(HEATMAP_WIDTH_INCHES * DPI))
        image = ax.imshow(shown, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{label} (mean {values.mean():.1f})", fontsize=10)
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes), fraction=0.046, pad=0.02, label="noise std (0-255)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def side_by_side(path: os.PathLike, panels: Sequence[np.ndarray], labels: Sequence[str]) -> None:
    """Write panels of equal height side by side, each with a label above it, as one image.

    ``panels``: H x W_i x 3 images, uint8 in [0, 255] or float in [0, 1] (clipped); ``labels``:
    one short text per panel. Panels are separated by white gaps of ``PANEL_GAP`` pixels.
    """
    panels = [to_uint8(p) for p in panels]
    height = panels[0].shape[0]
    if any(p.shape[0] != height or p.ndim != 3 or p.shape[2] != 3 for p in panels):
        raise ValueError(f"panels must be H x W x 3 of equal height, got {[p.shape for p in panels]}")
    columns = []
    for panel, label in zip(panels, labels):
        header = np.full((LABEL_HEIGHT, panel.shape[1], 3), 255, dtype=np.uint8)
        cv2.putText(header, label, (6, LABEL_HEIGHT - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
        columns.append(np.concatenate([header, panel], axis=0))
        columns.append(np.full((height + LABEL_HEIGHT, PANEL_GAP, 3), 255, dtype=np.uint8))
    write_image(path, np.concatenate(columns[:-1], axis=1))


class KernelPanel(NamedTuple):
    """One kernel of a picture: a title, the k x k kernel (sums to 1) and its kinfo (3,)."""

    title: str
    kernel: np.ndarray
    kinfo: np.ndarray


def kernel_from_kinfo(kinfo: np.ndarray, k_size: int = 21, sf: int = 4, shift: bool = False) -> np.ndarray:
    """The k_size x k_size float64 Gaussian kernel (sum 1) of kinfo (3,) in the data's orientation
    ('xy' grid: var1 along columns, var2 along rows)."""
    info = torch.as_tensor(np.asarray(kinfo, dtype=np.float64)).view(1, 3)
    from utils.degradation import kinfo_to_kernel  # scipy.ndimage: loaded when a kernel is drawn
    return kinfo_to_kernel(info, k_size, sf, shift, grid="xy")[0, 0].numpy()


def kinfo_caption(kinfo: np.ndarray) -> str:
    """'(var1, var2, rho) = (a, b, c)' with two decimals (variances in HR pixels^2)."""
    var1, var2, rho = (float(v) for v in kinfo)
    return f"(var1, var2, rho) = ({var1:.2f}, {var2:.2f}, {rho:+.2f})"


def kernel_figure(path: os.PathLike, panels: Sequence[KernelPanel]) -> None:
    """Write a PNG of the kernels side by side, each with its title above and its (var1, var2, rho)
    below; each panel's colours span 0 to its own largest tap, so that shapes compare at a glance.
    The file is written atomically."""
    fig = _figure((KERNEL_PANEL_INCHES * len(panels), KERNEL_PANEL_INCHES + 0.9))
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
