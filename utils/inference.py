"""The inference layer shared by the demos: device, model loading, precision, tiled inference,
and the command-line plumbing (common flags, error reporting, result tables).

Tiled inference (``run_model``). An image larger than ``tile`` pixels on either side is cut into
overlapping ``tile`` x ``tile`` windows whose corners sit on the UNet's padding grid (multiples of
``2**(depth-1)``), so every window sees the same down-sampling phase as the whole image. Each
window is restored alone and the outputs are blended: on the overlap of two neighbours each keeps
weight 0 on its outer quarter (pixels that saw the window's artificial border) and the weights
cross linearly over the central half; image borders keep full weight; the sum is normalised.
Only one window's activations exist at a time, so device memory is bounded by the tile size; the
input and the blended outputs are kept on the CPU. With the default overlap (64) the result
matches whole-image inference to well under 1/255 (tested on odd sizes).

Global estimates. K-Net and a pooled S-Net (the SR model's ``noise_avg``) average over the whole
image, so they cannot be tiled: they run once on the whole (low-resolution) input and their
outputs are pinned with forward hooks while the windows are restored. Hence for SR, ``kinfo``
and the noise level come from the whole LR image, exactly as without tiling, and only ``mu``
near the seams can differ. The denoisers' S-Net is local and is tiled like R-Net.

Precision. ``fp32`` runs as the reference does. ``bf16`` uses autocast (bfloat16 matmuls and
convolutions) and channels-last memory on CUDA. On a CPU bf16 is allowed (autocast on the CPU)
but is usually slower than fp32 unless the CPU has native bf16 units; a note says so.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import networks
from utils.config import resolve_path
from utils.fast import optimize_for_inference
from utils.image_io import ImageReadError, atomic_write, list_images

DEFAULT_TILE = 512
"""Default window side (pixels of the model input); larger images are tiled automatically."""
DEFAULT_TILE_OVERLAP = 64
"""Default overlap (pixels) between neighbouring windows."""
PRECISIONS = ("fp32", "bf16")
GLOBAL_ESTIMATORS = ("SNet", "KNet")
"""Sub-networks that are pinned to their whole-image output when they pool globally."""


class DemoError(Exception):
    """A problem the user can fix; its message is one line. Demos print it and exit non-zero."""


class InputImageError(DemoError):
    """One input image cannot be processed (unreadable, too small); folder runs skip it."""


# --------------------------------------------------------------------------- device, model

def pick_device(name: str = "auto") -> torch.device:
    """The device named by ``name``: 'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or
    'cuda:N'. Raises DemoError when CUDA is asked for but absent or the name is unknown."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DemoError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DemoError(f"device {name!r} asked for, but CUDA is not available here (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DemoError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise DemoError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def build_from_checkpoint(task: str, ckpt: dict, path: os.PathLike, sf: Optional[int] = None) -> nn.Module:
    """Build the network that a checkpoint dict (from ``networks.read_checkpoint``) describes.

    A checkpoint may carry ``'arch': {'task': str, 'kwargs': dict}`` (a non-released architecture:
    ``kwargs`` override the released constructor arguments); without it the released architecture
    of ``task`` is built. Raises DemoError when the entry is malformed or names another task.
    """
    arch = ckpt.get("arch")
    if arch is None:
        kwargs = {}
    else:
        if not isinstance(arch, dict) or not isinstance(arch.get("kwargs", {}), dict):
            raise DemoError(f"checkpoint {path}: 'arch' must be {{'task': str, 'kwargs': dict}}")
        if arch.get("task", task) != task:
            raise DemoError(f"checkpoint {path} holds a '{arch['task']}' model; this demo needs '{task}'")
        kwargs = arch.get("kwargs", {})
    try:
        return networks.build_model(task, sf=sf if task == "sisr" else None, **kwargs)
    except (TypeError, ValueError) as err:
        raise DemoError(f"checkpoint {path}: cannot build its architecture: {err}") from None


def load_model(task: str, ckpt_path: Optional[str], default_path: os.PathLike,
               device: torch.device, precision: str = "fp32", sf: Optional[int] = None) -> nn.Module:
    """Build the model of ``task`` and load its weights strictly; returns it in eval mode on ``device``.

    ``ckpt_path``: a checkpoint file (the authors' released ``.pth`` or one of ours, optionally with
    an 'arch' entry, see ``build_from_checkpoint``); empty or None means ``default_path``, and when
    that file is missing the DemoError says to pass --ckpt_path or download the released weights.
    With ``precision='bf16'`` on CUDA the weights are put in channels-last memory format. The
    returned module's ``weights_info`` (``describe_weights``) says which weights it holds.
    Raises DemoError (or ``networks.CheckpointError``, one line) on any problem.
    """
    if not ckpt_path:
        path = Path(default_path)
        if not path.is_file():
            raise DemoError(f"no checkpoint at {path}: pass --ckpt_path FILE, or download the authors' "
                            f"released weights into {path.parent}/ (see README)")
    else:
        path = Path(ckpt_path)
    ckpt = networks.read_checkpoint(path)
    net = build_from_checkpoint(task, ckpt, path, sf)
    networks.load_checkpoint(net, path, ckpt)
    net.weights_info = describe_weights(net, path, ckpt.get("meta"))
    net = net.eval().to(device)
    if precision == "bf16" and device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    return net


def describe_weights(net: nn.Module, path: os.PathLike, meta: Optional[dict] = None) -> str:
    """One line naming the weights file, its architecture (released or compact), its parameter
    count and, for model-zoo files written by ``utils.export_weights``, their note and storage."""
    arch = getattr(net, "arch", None) or {}
    task = arch.get("task", "?")
    released = networks.RELEASED_CONFIGS.get(task)
    kind = "released" if released is not None and arch.get("kwargs") == released else "compact"
    count = sum(p.numel() for p in net.parameters()) / 1e6
    text = f"{path} ({kind} {task} architecture, {count:.2f} M parameters"
    if isinstance(meta, dict):
        text += f", stored as {meta['dtype']}" if meta.get("dtype") else ""
        text += f"; {meta['note']}" if meta.get("note") else ""
    return text + ")"


def size_multiple(net: nn.Module) -> int:
    """The side multiple R-Net pads its input to: 2**(depth - 1)."""
    return 2 ** (net.RNet.depth - 1)


def min_input_side(net: nn.Module, sf: Optional[int] = None) -> int:
    """The smallest input side the model accepts (R-Net's reflect padding must be shorter than the
    side it pads): the padding multiple, divided by ``sf`` for SR (R-Net sees the upsampled image)."""
    return max(2, math.ceil(size_multiple(net) / (sf or 1)))


def precision_context(device: torch.device, precision: str):
    """The autocast context for ``precision`` ('fp32': none; 'bf16': bfloat16 autocast)."""
    if precision not in PRECISIONS:
        raise DemoError(f"unknown precision {precision!r} (use {' or '.join(PRECISIONS)})")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------- tiling

def tiling_params(tile: int, overlap: int, multiple: int) -> tuple[int, int]:
    """``tile`` and ``overlap`` rounded up to multiples of ``multiple`` (tile 0 stays 0: no tiling).
    Raises DemoError unless both are >= 0 and the rounded tile exceeds the rounded overlap."""
    if tile < 0 or overlap < 0:
        raise DemoError(f"--tile and --tile_overlap must be >= 0, got {tile} and {overlap}")
    tile, overlap = -(-tile // multiple) * multiple, -(-overlap // multiple) * multiple
    if 0 < tile <= overlap:
        raise DemoError(f"--tile ({tile}) must be larger than --tile_overlap ({overlap}), "
                        f"both rounded up to a multiple of {multiple}")
    return tile, overlap


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


def _axis_weights(spans: list[tuple[int, int]], scale: int) -> tuple[list[torch.Tensor], torch.Tensor]:
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


def _is_global(module: nn.Module) -> bool:
    """Whether a sub-network pools over the whole image (contains an adaptive average pool)."""
    return any(isinstance(m, nn.AdaptiveAvgPool2d) for m in module.modules())


@contextlib.contextmanager
def _pinned_estimators(net: nn.Module, x: torch.Tensor, device: torch.device,
                       channels_last: bool) -> Iterator[None]:
    """Run the globally pooling estimators (``GLOBAL_ESTIMATORS``) once on the whole input ``x`` and
    make every call inside the block return that output (forward hooks, removed on exit)."""
    modules = [getattr(net, name) for name in GLOBAL_ESTIMATORS if hasattr(net, name)]
    modules = [m for m in modules if _is_global(m)]
    handles = []
    try:
        if modules:
            whole = _to_device(x, device, channels_last)
            for module in modules:
                value = module(whole)
                handles.append(module.register_forward_hook(lambda _m, _i, _o, v=value: v))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """``x`` on ``device``, in channels-last memory format when asked."""
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def run_model(net: nn.Module, x: torch.Tensor, *args, tile: int = DEFAULT_TILE,
              overlap: int = DEFAULT_TILE_OVERLAP, precision: str = "fp32") -> tuple[tuple[torch.Tensor, ...], bool]:
    """``net(x, *args)`` under ``torch.inference_mode``, tiled when ``x`` is larger than ``tile``.

    ``x``: 1 x C x H x W float32 CPU tensor (moved to the model's device window by window);
    ``args``: extra forward arguments (the scale factor for SR); ``tile``: window side in input
    pixels, 0 disables tiling; ``overlap``: pixels shared by neighbouring windows. Both are rounded
    up to the model's padding multiple. Returns (the model's outputs as float32 CPU tensors, whether
    it tiled). Spatial outputs (e.g. mu, the sigma map; any integer scale of the input) are blended;
    global outputs (kinfo, a pooled sigma) come from the whole image (see the module docstring).
    """
    device = next(net.parameters()).device
    channels_last = precision == "bf16" and device.type == "cuda"
    multiple = size_multiple(net)
    tile, overlap = tiling_params(tile, overlap, multiple)
    height, width = x.shape[-2:]
    with torch.inference_mode(), precision_context(device, precision):
        if tile == 0 or (height <= tile and width <= tile):
            outputs = net(_to_device(x, device, channels_last), *args)
            return tuple(o.float().cpu() for o in outputs), False
        rows = tile_spans(height, tile, overlap, multiple)
        cols = tile_spans(width, tile, overlap, multiple)
        with _pinned_estimators(net, x, device, channels_last):
            outputs = _blend_windows(net, x, args, rows, cols, device, channels_last)
    return outputs, True


def _blend_windows(net: nn.Module, x: torch.Tensor, args: tuple, rows: list[tuple[int, int]],
                   cols: list[tuple[int, int]], device: torch.device,
                   channels_last: bool) -> tuple[torch.Tensor, ...]:
    """Restore every window of ``x`` and blend the spatial outputs (see ``run_model``)."""
    results: list[torch.Tensor] = []
    scales: list[int] = []  # per output: its spatial scale, 0 for a global output
    weights: dict[int, tuple] = {}  # scale -> (row ramps, row sums, column ramps, column sums)
    windows = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
    for i, j in tqdm(windows, desc="tiles", unit="tile", leave=False, disable=None):
        (r0, r1), (c0, c1) = rows[i], cols[j]
        outs = [o.float().cpu() for o in net(_to_device(x[..., r0:r1, c0:c1], device, channels_last), *args)]
        if not results:
            scales = [0 if o.ndim != 4 or o.shape[-2:] == (1, 1) else o.shape[-2] // (r1 - r0) for o in outs]
            results = [o if s == 0 else o.new_zeros(*o.shape[:2], s * x.shape[-2], s * x.shape[-1])
                       for o, s in zip(outs, scales)]
        for k, (out, scale) in enumerate(zip(outs, scales)):
            if scale == 0:
                continue  # global outputs are pinned: the same in every window
            if scale not in weights:
                weights[scale] = (*_axis_weights(rows, scale), *_axis_weights(cols, scale))
            row_ramps, _, col_ramps, _ = weights[scale]
            window = results[k][..., r0 * scale:r1 * scale, c0 * scale:c1 * scale]
            window += out * (row_ramps[i][:, None] * col_ramps[j][None, :])
    for k, scale in enumerate(scales):
        if scale:
            _, row_sum, _, col_sum = weights[scale]
            results[k] /= row_sum[:, None] * col_sum[None, :]
    return tuple(results)


# --------------------------------------------------------------------------- image level

@dataclass
class Restored:
    """The outputs of one image.

    image: H' x W' x 3 float32 in [0, 1], the restored image (mu clipped); H' = sf * H for SR.
    noise_var: h x w x C float32, the estimated noise variance on the [0, 1] scale (1 x 1 x C when
        the model pools it); its square root times 255 is the noise std in 0-255 units.
    kinfo: (3,) float32 (variance along columns, along rows, correlation) for SR, else None.
    tiled: whether tiled inference was used.
    """
    image: np.ndarray
    noise_var: np.ndarray
    kinfo: Optional[np.ndarray]
    tiled: bool

    @property
    def noise_std_255(self) -> np.ndarray:
        """The estimated noise standard deviation in 0-255 units, h x w x C float32."""
        return np.sqrt(self.noise_var) * 255.0


class Restorer:
    """Runs a loaded VIRNet model on H x W x 3 float images (see ``run_model`` for tiling).

    ``sf``: the scale factor for an SR model (None for a denoiser); ``tile``/``overlap``: window side
    and overlap in input pixels (``tile=0`` disables tiling); ``precision``: 'fp32' or 'bf16'.
    """

    def __init__(self, net: nn.Module, sf: Optional[int] = None, tile: int = DEFAULT_TILE,
                 overlap: int = DEFAULT_TILE_OVERLAP, precision: str = "fp32"):
        self.tile, self.overlap = tiling_params(tile, overlap, size_multiple(net))
        self.net, self.sf, self.precision = net, sf, precision
        self.min_side = min_input_side(net, sf)

    def will_tile(self, height: int, width: int) -> bool:
        """Whether an input of this size is restored window by window."""
        return self.tile > 0 and max(height, width) > self.tile

    def __call__(self, im: np.ndarray) -> Restored:
        """Restore ``im``: H x W x 3 float32 (nominally [0, 1]; noisy inputs may exceed it).

        Raises InputImageError when a side is shorter than ``self.min_side``.
        """
        if im.ndim != 3 or im.shape[2] != 3:
            raise InputImageError(f"expected an H x W x 3 image, got shape {im.shape}")
        height, width = im.shape[:2]
        if min(height, width) < self.min_side:
            raise InputImageError(f"image too small: {width} x {height} "
                                  f"(min {self.min_side} x {self.min_side})")
        x = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32).transpose(2, 0, 1))[None]
        args = () if self.sf is None else (self.sf,)
        outputs, tiled = run_model(self.net, x, *args, tile=self.tile, overlap=self.overlap,
                                   precision=self.precision)
        mu, sigma = outputs[0], outputs[-1]
        kinfo = outputs[1][0].numpy() if len(outputs) == 3 else None
        return Restored(image=mu[0].clamp(0.0, 1.0).permute(1, 2, 0).numpy(),
                        noise_var=sigma[0].permute(1, 2, 0).numpy(), kinfo=kinfo, tiled=tiled)


def image_file_notes(path: os.PathLike) -> list[str]:
    """What the reading policy (``utils.image_io``) changes in this file, as short phrases:
    grayscale replicated to RGB, alpha channel dropped, 16-bit samples. Empty for 8-bit RGB or when
    the file cannot be decoded (reading it then raises the real error)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        return []
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    notes = []
    if channels in (1, 2):
        notes.append("grayscale, replicated to 3 channels")
    if channels in (2, 4):
        notes.append("alpha channel dropped")
    if raw.dtype == np.uint16:
        notes.append("16-bit samples scaled to [0, 1]; outputs are 8-bit")
    return notes


# --------------------------------------------------------------------------- command line

def add_common_args(parser: argparse.ArgumentParser, default_ckpt: os.PathLike) -> None:
    """Add the flags every demo shares: -i/--in_path, -o/--out_path, --ckpt_path, --prefix,
    --device, --precision, --tile, --tile_overlap (same style as the reference's demo)."""
    parser.add_argument("-i", "--in_path", default=None,
                        help="input image or folder of images (PNG, JPEG, BMP, TIFF)")
    parser.add_argument("-o", "--out_path", default="outputs", help="output folder (default: outputs)")
    parser.add_argument("--ckpt_path", default="",
                        help=f"checkpoint file (default: {default_ckpt}); the authors' released weights "
                             "or ours, optionally with an 'arch' entry for a non-released architecture")
    parser.add_argument("--prefix", default="", help="appended to output names as _PREFIX")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32, or bf16 autocast (channels-last on CUDA; slow on most CPUs)")
    parser.add_argument("--fast", action="store_true",
                        help="faster fp32 CPU inference (utils.fast: NNPACK 3x3 convolutions, one-pixel SR "
                             "attention; about 1.7x, outputs within 1e-4 of the plain path, more memory)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help=f"tile images larger than this many pixels per side (default {DEFAULT_TILE}; 0: never)")
    parser.add_argument("--tile_overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                        help=f"overlap of neighbouring tiles in pixels (default {DEFAULT_TILE_OVERLAP})")


def restorer_from_args(args: argparse.Namespace, task: str, default_ckpt: os.PathLike,
                       sf: Optional[int] = None) -> Restorer:
    """Pick the device, load the model (printing which weights) and wrap it in a Restorer, from the
    common flags."""
    device = pick_device(args.device)
    if args.precision == "bf16" and device.type == "cpu":
        print("note: bf16 on the CPU runs through autocast and is usually slower than fp32", file=sys.stderr)
    net = load_model(task, args.ckpt_path, default_ckpt, device, args.precision, sf)
    print(f"weights: {net.weights_info}")
    if args.fast:
        net = optimize_for_inference(net, device)
    return Restorer(net, sf=sf, tile=args.tile, overlap=args.tile_overlap, precision=args.precision)


def report_errors(run: Callable[[Optional[Sequence[str]]], int],
                  argv: Optional[Sequence[str]] = None) -> int:
    """Call ``run(argv)`` and turn the user-facing errors into one line on stderr.

    DemoError, CheckpointError, ImageReadError, OSError and running out of GPU or CPU memory print
    ``error: <message>`` (no traceback) and return 1; Ctrl-C returns 130. Other exceptions
    (bugs) propagate with their traceback. Returns ``run``'s exit code otherwise.
    """
    try:
        return run(argv)
    except torch.cuda.OutOfMemoryError:
        message = "out of GPU memory; use a smaller --tile (e.g. --tile 256) or --precision bf16"
    except RuntimeError as err:
        if "can't allocate memory" not in str(err):
            raise
        message = "out of memory; use a smaller --tile (e.g. --tile 256)"
    except (DemoError, networks.CheckpointError, ImageReadError) as err:
        message = str(err)
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        message = f"{err.strerror or err}{where}"
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"error: {message}", file=sys.stderr)
    return 1


def protocol_dirs(data_root: str, datasets: Sequence[str]) -> dict[str, Path]:
    """Map each test-set name to its folder under ``data_root`` (looked up in the current folder,
    then beside the repository); raises DemoError for a missing or empty folder."""
    root = resolve_path(data_root)
    if root is None or not root.is_dir():
        raise DemoError(f"--data_root: folder not found: {data_root}")
    dirs = {name: root / name for name in datasets}
    for name, folder in dirs.items():
        if not folder.is_dir():
            raise DemoError(f"test set {name!r} not found: no folder {folder} (see --data_root)")
        if not list_images(folder):
            raise DemoError(f"test set {name!r}: no image files in {folder}")
    return dirs


def input_files(in_path: os.PathLike) -> list[Path]:
    """The images that ``-i`` names: the file itself, or the image files of a folder (sorted).
    Raises DemoError when the path is missing or the folder holds no image file."""
    in_path = Path(in_path)
    if not in_path.exists():
        raise DemoError(f"input not found: {in_path}")
    if not in_path.is_dir():
        return [in_path]
    files = list_images(in_path)
    if not files:
        raise DemoError(f"no image files (.png, .jpg, .bmp, .tif) in folder {in_path}")
    return files


def prepare_output_dir(path: os.PathLike) -> Path:
    """Create the output folder (and parents) and check it is writable; raises DemoError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DemoError(f"cannot create output folder {path}: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DemoError(f"output folder {path} is not writable")
    return path


def check_no_overwrite(outputs: Sequence[os.PathLike], inputs: Sequence[os.PathLike]) -> None:
    """Refuse (DemoError) when a planned output file is an input file or is planned twice."""
    sources = {Path(p).resolve(): Path(p) for p in inputs}
    seen: dict[Path, Path] = {}
    for out in outputs:
        key = Path(out).resolve()
        if key in sources:
            raise DemoError(f"output {out} would overwrite the input {sources[key]}; "
                            "choose another --out_path or a --prefix")
        if key in seen:
            raise DemoError(f"two inputs would both be written to {out}; "
                            "rename one or restore them into different folders")
        seen[key] = Path(out)


# --------------------------------------------------------------------------- result tables

def write_csv(path: os.PathLike, rows: Sequence[dict]) -> None:
    """Write ``rows`` (dicts with the same keys, in order) as CSV with a header, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_json(path: os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path: os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table with padded columns (cells formatted with ``str``)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"
