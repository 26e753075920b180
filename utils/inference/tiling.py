"""Tiled inference: any image size in bounded memory, matching whole-image inference.

An image larger than ``tile`` input pixels on either side is cut into overlapping ``tile`` x ``tile``
windows whose corners sit on the model's padding grid (multiples of ``pad_multiple``), so every
window sees the same down-sampling phase as the whole image. Each window is restored alone and the
outputs are blended: on the overlap of two neighbours each keeps weight 0 on its outer quarter
(pixels that saw the window's artificial border) and the weights cross linearly over the central
half; image borders keep full weight; the sum is normalised. Only one window's activations exist
at a time, so device memory is bounded by the tile size; the input and the blended outputs are
kept on the CPU. With the default overlap (64) the result matches whole-image inference to well
under 1/255 (tested on odd sizes).

Whole-image estimates (the K-Net, a pooled S-Net) cannot be tiled: the backend computes them once
on the whole input and pins them while the windows run (``backends``). Hence for SR, ``kinfo`` and
the noise level come from the whole LR image, exactly as without tiling, and only ``mu`` near the
seams can differ. A spatial S-Net (the denoisers') is tiled like the R-Net.

Default tiles (``default_tiling``) are bounded in OUTPUT pixels, the same for every task: the
R-Net of an SR model works on the up-sampled image, so its memory grows with the output's size.
On the CPU (and MPS) a window restores at most ``DEFAULT_TILE`` x ``DEFAULT_TILE`` output pixels
(128 x 128 input pixels for SR x4), overlapping by ``DEFAULT_TILE_OVERLAP`` output pixels; on
CUDA the bound is what half the device's free memory holds at ``BYTES_PER_OUTPUT_PIXEL``, at most
``MAX_TILE``. An explicit ``--tile`` / ``--tile_overlap`` counts input pixels.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

from utils.errors import UserError

from .backends import EagerBackend

DEFAULT_TILE = 512
"""Default bound on a window's side in output pixels off CUDA; larger images are tiled automatically."""
DEFAULT_TILE_OVERLAP = 64
"""Default overlap between neighbouring windows, in output pixels (input pixels of a denoiser)."""
MAX_TILE = 4096
"""The largest default window side on CUDA, in output pixels."""
BYTES_PER_OUTPUT_PIXEL = 3584
"""Estimated peak memory of a float32 restoration per output pixel (3.5 KiB): the largest of the
released architectures' peaks at 256 x 256 and 512 x 512 output pixels measured on a CPU (resident
set growth of one eager forward under ``torch.inference_mode``: the denoisers 2.9-4.3 KiB, SR x2 and
x4 3.4-5.1 KiB, the larger figure at the smaller size, where fixed buffers weigh more); bf16 needs
about half. It sizes the CUDA windows (``cuda_output_bound``)."""
FREE_MEMORY_SHARE = 0.5
"""The share of the device's free memory a default CUDA window may fill (the rest: cuDNN workspaces,
the allocator's fragmentation, the whole-image estimates)."""
MIN_TILE_MULTIPLES = 4
"""The smallest window spans this many padding multiples of the network."""


def tiling_params(tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    """``tile`` and ``overlap`` rounded up to multiples of ``multiple`` (tile 0 stays 0: no tiling).

    Raises UserError unless both are >= 0 and, when tiling, the rounded tile holds at least
    ``MIN_TILE_MULTIPLES`` padding multiples and exceeds the overlap, and the overlap is not 0:
    smaller tiles or abutting ones give visibly blocky results.
    """
    if tile < 0 or overlap < 0:
        raise UserError(f"--tile and --tile_overlap must be >= 0, got {tile} and {overlap}")
    asked = tile
    tile, overlap = -(-tile // multiple) * multiple, -(-overlap // multiple) * multiple
    if tile == 0:
        return tile, overlap
    smallest = MIN_TILE_MULTIPLES * multiple
    if tile < smallest:
        raise UserError(f"--tile {asked} is too small: tiles of this network must span at least {smallest} "
                        f"pixels ({MIN_TILE_MULTIPLES} x its padding multiple {multiple}), else the result "
                        f"is blocky; use a larger --tile, or --tile 0 to never tile")
    if overlap == 0:
        raise UserError("--tile_overlap 0 leaves visible seams between tiles; give an overlap "
                        f"(default {DEFAULT_TILE_OVERLAP}), or --tile 0 to never tile")
    if tile <= overlap:
        raise UserError(f"--tile ({tile}) must be larger than --tile_overlap ({overlap}), "
                        f"both rounded up to a multiple of {multiple}")
    return tile, overlap


def cuda_output_bound(free_bytes: int) -> int:
    """The side (output pixels) of the largest square window whose estimated float32 restoration
    (``BYTES_PER_OUTPUT_PIXEL`` per pixel) fits ``FREE_MEMORY_SHARE`` of ``free_bytes``, at most
    ``MAX_TILE``. E.g. 8 GiB free: 1094; 24 GiB: 1896; 70 GiB: 3238."""
    return min(MAX_TILE, math.isqrt(int(free_bytes * FREE_MEMORY_SHARE) // BYTES_PER_OUTPUT_PIXEL))


def output_bound(device: torch.device) -> int:
    """The default window side in output pixels on ``device``: from the free memory on CUDA
    (``torch.cuda.mem_get_info``, ``cuda_output_bound``), else ``DEFAULT_TILE``."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return cuda_output_bound(free)
    return DEFAULT_TILE


def default_tiling(device: torch.device, multiple: int, sf: int | None = None) -> tuple[int, int]:
    """The default (tile, overlap) in input pixels of a model with padding multiple ``multiple`` and
    scale factor ``sf`` (None or 1: a denoiser) on ``device``.

    The overlap is ``DEFAULT_TILE_OVERLAP`` output pixels divided by ``sf``, rounded up to the
    multiple; the tile is ``output_bound(device)`` divided by ``sf``, rounded down to the multiple
    (SR x4 on a CPU: 512 / 4 = 128), and at least twice the overlap and ``MIN_TILE_MULTIPLES``
    multiples (a GPU with little free memory).
    """
    scale = sf or 1
    overlap = -(-DEFAULT_TILE_OVERLAP // (scale * multiple)) * multiple
    tile = output_bound(device) // scale // multiple * multiple
    return max(tile, 2 * overlap, MIN_TILE_MULTIPLES * multiple), overlap


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """Windows ``[start, end)`` covering ``range(length)``, evenly spread.

    Starts are multiples of ``multiple`` (``tile`` and ``overlap`` must be too); neighbours overlap
    by at least ``overlap``; every window spans ``tile`` except the last, which runs to ``length``
    and spans between ``tile`` and ``tile + multiple - 1``. One window when that covers ``length``.
    """
    last = max(length - tile, 0) // multiple * multiple
    if last == 0:
        return [(0, length)]
    count = -(-last // (tile - overlap)) + 1
    starts = [k * last // (count - 1) // multiple * multiple for k in range(count)]
    return [(s, s + tile) for s in starts[:-1]] + [(last, length)]


def axis_weights(spans: list[tuple[int, int]], scale: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Blending weights along one axis, in output pixels (input pixels x ``scale``).

    On the overlap of two neighbours each window keeps weight 0 on its outer quarter (the pixels
    that saw the window's zero-padded border), and the weights cross linearly over the central half,
    summing to one. Returns one 1-D ramp per window and the sum of all ramps over the axis (the
    normaliser, positive everywhere).
    """
    ramps = []
    total = torch.zeros(spans[-1][1] * scale, dtype=torch.float64)
    for index, (start, end) in enumerate(spans):
        start, end = start * scale, end * scale
        pos = torch.arange(start, end, dtype=torch.float64) + 0.5
        weight = torch.ones_like(pos)
        if index > 0:
            shared = spans[index - 1][1] * scale - start
            weight = torch.minimum(weight, (pos - start - shared / 4) / (shared / 2))
        if index < len(spans) - 1:
            shared = end - spans[index + 1][0] * scale
            weight = torch.minimum(weight, (end - shared / 4 - pos) / (shared / 2))
        weight = weight.clamp(min=0.0)
        total[start:end] += weight
        ramps.append(weight.float())
    return ramps, total.float()


def tiled_call(backend, x: torch.Tensor, *args, tile: int = DEFAULT_TILE,
               overlap: int = DEFAULT_TILE_OVERLAP) -> tuple[tuple[torch.Tensor, ...], bool]:
    """``backend(x, *args)``, tiled when ``x`` is larger than ``tile``.

    ``backend``: see ``backends``; ``x``: 1 x C x H x W float32 CPU tensor (moved to the device
    window by window); ``args``: extra forward arguments (the scale factor for SR); ``tile``: window
    side in input pixels, 0 disables tiling; ``overlap``: input pixels shared by neighbouring windows
    (the defaults are a denoiser's; ``default_tiling`` gives any model's). Both are rounded up to the
    model's padding multiple. Returns (the outputs as float32 CPU tensors,
    whether it tiled). Spatial outputs (mu, a sigma map; any integer scale of the input) are
    blended; global outputs (kinfo, a pooled sigma) come from the whole image.
    """
    multiple = backend.pad_multiple
    tile, overlap = tiling_params(tile, overlap, multiple)
    height, width = x.shape[-2:]
    if tile == 0 or (height <= tile and width <= tile):
        return backend(x, *args), False
    rows = tile_spans(height, tile, overlap, multiple)
    cols = tile_spans(width, tile, overlap, multiple)
    with backend.pinned(x, *args):
        return _blend_windows(backend, x, args, rows, cols), True


def run_model(net: nn.Module, x: torch.Tensor, *args, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_TILE_OVERLAP,
              precision: str = "fp32") -> tuple[tuple[torch.Tensor, ...], bool]:
    """``tiled_call`` of the eager backend of ``net`` (an eval-mode model) at ``precision``."""
    return tiled_call(EagerBackend(net, precision), x, *args, tile=tile, overlap=overlap)


def _blend_windows(backend, x: torch.Tensor, args: tuple, rows: list[tuple[int, int]],
                   cols: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
    """Restore every window of ``x`` and blend the spatial outputs (see ``tiled_call``)."""
    results: list[torch.Tensor] = []
    scales: list[int] = []  # per output: its spatial scale, 0 for a global output
    weights: dict[int, tuple] = {}  # scale -> (row ramps, row sums, column ramps, column sums)
    windows = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    for i, j in tqdm(windows, desc="tiles", unit="tile", leave=False, disable=None):
        (r0, r1), (c0, c1) = rows[i], cols[j]
        outs = backend(x[..., r0:r1, c0:c1], *args)
        if not results:
            scales = [0 if o.ndim != 4 or o.shape[-2:] == (1, 1) else o.shape[-2] // (r1 - r0) for o in outs]
            results = [o if s == 0 else o.new_zeros(*o.shape[:2], s * x.shape[-2], s * x.shape[-1])
                       for o, s in zip(outs, scales)]
        for k, (out, scale) in enumerate(zip(outs, scales)):
            if scale == 0:
                continue  # global outputs are pinned: the same in every window
            if scale not in weights:
                weights[scale] = (*axis_weights(rows, scale), *axis_weights(cols, scale))
            row_ramps, _, col_ramps, _ = weights[scale]
            window = results[k][..., r0 * scale:r1 * scale, c0 * scale:c1 * scale]
            window += out * (row_ramps[i][:, None] * col_ramps[j][None, :])
    for k, scale in enumerate(scales):
        if scale:
            _, row_sum, _, col_sum = weights[scale]
            results[k] /= row_sum[:, None] * col_sum[None, :]
    return tuple(results)
