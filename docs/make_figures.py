#!/usr/bin/env python
"""Draw the README's framework figure, docs/figures/framework.png: the VIRNet pipeline, the S-Net
and K-Net estimating the degradation (noise variance map, blur kernel) and the R-Net restoring the
image conditioned on them, with the ELBO terms that train each.

    python docs/make_figures.py            # writes docs/figures/framework.png (about 60 KB)
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

OUT = Path(__file__).resolve().parent / "figures" / "framework.png"
"""Where the figure is written."""
COLOURS = {"input": "#e8e8e8", "snet": "#cfe3f7", "knet": "#f9dcc4", "rnet": "#d5ecd4", "loss": "#f3f3f3"}
"""Fill colours of the boxes: input / output, S-Net, K-Net, R-Net, loss."""


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str, size: float = 10) -> None:
    """A rounded box with its lower-left corner at (x, y), in axes units (0-10 by 0-5), holding ``text``."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05,rounding_size=0.15",
                                facecolor=colour, edgecolor="#444444", linewidth=1.2))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], text: str = "", dashed: bool = False) -> None:
    """An arrow from ``start`` to ``end``, labelled ``text`` at its middle."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, linewidth=1.3, color="#333333",
                                 linestyle="--" if dashed else "-"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", va="bottom", fontsize=8.5,
                color="#333333")


def draw(path: Path = OUT) -> Path:
    """Draw the pipeline and save it as a PNG at ``path``; returns ``path``."""
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=100)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 5)
    ax.axis("off")
    _box(ax, 0.1, 2.1, 1.5, 0.9, "degraded image y\n(noisy; LR for SR)", COLOURS["input"], 9)
    _box(ax, 2.5, 3.6, 2.2, 0.9, "S-Net (DnCNN)\nnoise variance map σ²", COLOURS["snet"], 9.5)
    _box(ax, 2.5, 0.4, 2.2, 1.1, "K-Net (SR only)\nblur kernel kinfo\n(var1, var2, ρ)", COLOURS["knet"], 9.5)
    _box(ax, 5.6, 2.05, 2.1, 1.0, "R-Net (attention\nresidual U-Net)\nrestored image μ", COLOURS["rnet"], 9.5)
    _box(ax, 8.4, 2.1, 1.5, 0.9, "restored x\n(x sf for SR)", COLOURS["input"], 9)
    _arrow(ax, (1.65, 2.8), (2.45, 3.9))
    _arrow(ax, (1.65, 2.3), (2.45, 1.0))
    _arrow(ax, (1.65, 2.55), (5.55, 2.55), "y")
    _arrow(ax, (4.75, 3.95), (5.8, 3.1), "condition")
    _arrow(ax, (4.75, 1.0), (5.8, 2.0), "condition")
    _arrow(ax, (7.75, 2.55), (8.35, 2.55))
    ax.text(5.0, 4.85, "VIRNet: variational inference of the degradation and the image, one network per posterior",
            ha="center", va="center", fontsize=10.5, weight="bold")
    ax.text(8.1, 0.75, "trained by the negative ELBO:\nlikelihood of y + KL(image) + KL(noise variance)\n"
                       "+ KL(kernel) for SR", ha="center", va="center", fontsize=8.5,
            bbox=dict(boxstyle="round,pad=0.3", facecolor=COLOURS["loss"], edgecolor="#999999"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    written = draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
    print(f"wrote {written} ({written.stat().st_size // 1024} KB)")
