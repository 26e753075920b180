"""Pictures of the demos' results: noise-level heat maps, side-by-side panels and blur kernels.

Noise heat maps and panels are drawn with OpenCV; the kernel figures with matplotlib's object API on
an Agg canvas (no display, no global pyplot state), loaded when such a figure is drawn, not when this
module is imported. Every file is written atomically.

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

HEATMAP_WIDTH = 720
"""Width in pixels of one heat-map panel; the height follows the image's aspect ratio."""
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


def _viridis(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """H x W x 3 uint8 RGB of ``values`` on the viridis colour scale from ``vmin`` to ``vmax``."""
    level = np.clip((values - vmin) / (vmax - vmin), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.round(level * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    return bgr[:, :, ::-1]


def _label(width: int, text: str, height: int = LABEL_HEIGHT) -> np.ndarray:
    """A white strip ``width`` pixels wide with ``text`` in black on it."""
    strip = np.full((height, width, 3), 255, dtype=np.uint8)
    cv2.putText(strip, text, (6, height - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def _colour_bar(height: int, vmin: float, vmax: float) -> np.ndarray:
    """A vertical viridis bar ``height`` pixels high (``vmax`` at the top) with five value ticks."""
    bar_width, text_width = 18, 54
    ramp = np.linspace(vmax, vmin, height, dtype=np.float32)[:, None].repeat(bar_width, axis=1)
    panel = np.full((height, bar_width + text_width, 3), 255, dtype=np.uint8)
    panel[:, :bar_width] = _viridis(ramp, vmin, vmax)
    for fraction in np.linspace(0.0, 1.0, 5):
        row = min(height - 1, round(fraction * (height - 1)))
        value = vmax - fraction * (vmax - vmin)
        baseline = min(height - 3, max(11, row + 4))
        cv2.line(panel, (bar_width, row), (bar_width + 4, row), (0, 0, 0), 1)
        cv2.putText(panel, f"{value:.1f}", (bar_width + 7, baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0),
                    1, cv2.LINE_AA)
    return panel


def noise_heatmap(path: os.PathLike, std_255: np.ndarray, true_std_255: Optional[np.ndarray] = None,
                  title: str = "estimated noise std") -> None:
    """Write a PNG heat map of a noise standard-deviation map with a colour bar in 0-255 units.

    ``std_255``: H x W or H x W x C (channels averaged) noise std on the 0-255 scale.
    ``true_std_255``: optional ground-truth map of the same size, drawn beside it on the same
    colour scale (quick-look mode, where the synthetic noise is known). The colour range and the
    means in the titles come from the full-resolution maps; each panel is ``HEATMAP_WIDTH`` pixels
    wide (area-downscaled, or enlarged pixel by pixel). Drawn with OpenCV (viridis), so a restore
    that writes this picture loads no plotting library.
    """
    maps = [(title, _as_map(std_255))]
    if true_std_255 is not None:
        maps.append(("true noise std", _as_map(true_std_255)))
    height, width = maps[0][1].shape
    vmax = max(float(m.max()) for _, m in maps)
    vmin = min(float(m.min()) for _, m in maps)
    if vmax - vmin < 1e-6:  # a constant map (pooled estimate): centre it in a visible range
        vmin, vmax = vmin - 1.0, vmax + 1.0
    shown_height = max(1, round(height * HEATMAP_WIDTH / width))
    gap = np.full((shown_height + LABEL_HEIGHT, PANEL_GAP, 3), 255, dtype=np.uint8)
    columns = []
    for label, values in maps:
        smaller = width > HEATMAP_WIDTH
        shown = cv2.resize(values, (HEATMAP_WIDTH, shown_height),
                           interpolation=cv2.INTER_AREA if smaller else cv2.INTER_NEAREST)
        columns += [np.concatenate([_label(HEATMAP_WIDTH, f"{label} (mean {values.mean():.1f})"),
                                    _viridis(shown, vmin, vmax)], axis=0), gap]
    bar = _colour_bar(shown_height, vmin, vmax)
    columns.append(np.concatenate([_label(bar.shape[1], "std", LABEL_HEIGHT), bar], axis=0))
    write_image(path, np.concatenate(columns, axis=1))


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
