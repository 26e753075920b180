"""The demos' command-line plumbing: the flags they share, the Restorer they build from them, their
inputs and outputs, and their one-line errors."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from utils import errors
from utils.config import resolve_path
from utils.devices import choose_device, set_tf32
from utils.errors import UserError
from utils.image_io import list_images
from utils.outputs import folder_name, refuse_foreign

from .auto import CHOICES
from .backends import BACKENDS
from .loading import load_model
from .noise_control import noise_control_from_args
from .onnx_backend import load_onnx
from .restorer import Restorer
from .tiling import DEFAULT_TILE, DEFAULT_TILE_OVERLAP


REPOSITORY = Path(__file__).resolve().parents[2]
"""The repository's root folder: default paths are shown relative to it."""


def _from_repository(path: os.PathLike) -> str:
    """``path`` relative to the repository's root when it lies inside it (as --help shows defaults)."""
    try:
        return str(Path(path).resolve().relative_to(REPOSITORY))
    except ValueError:
        return str(path)


def add_common_args(parser: argparse.ArgumentParser, default_ckpt: os.PathLike) -> None:
    """Add the flags every demo shares: -i/--in_path, -o/--out_path, --ckpt_path, --prefix,
    --device, --precision, --backend, --fast, --tile, --tile_overlap, --tf32, --bit_depth (the
    reference demo's style)."""
    parser.add_argument("-i", "--in_path", default=None,
                        help="input image or folder of images (PNG, JPEG, BMP, TIFF)")
    parser.add_argument("-o", "--out_path", default="outputs", help="output folder (default: outputs)")
    parser.add_argument("--ckpt_path", default="",
                        help=f"checkpoint file (default: {_from_repository(default_ckpt)}); the authors' released weights "
                             "or ours, optionally with an 'arch' entry for a non-released architecture, or a "
                             ".onnx export of one (python -m utils.export_weights SRC DST.onnx; ONNX Runtime)")
    parser.add_argument("--prefix", default="", help="appended to output names as _PREFIX")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files in -o that this project did not write (by default such a "
                             "file stops the run before anything is written)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if present, else Apple MPS if present, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--precision", choices=CHOICES, default=None,
                        help="auto (default when restoring and in quick looks: bf16 autocast + channels-last where "
                             "the GPU or CPU computes bf16 natively, else fp32 on the fastest fp32 path; the 'run:' "
                             "line says what it chose and why), fp32 (the protocols' default: exact numbers), bf16")
    parser.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                        help="how the model runs: eager (PyTorch), fast (NNPACK, fp32), onnx (an exported .onnx file; "
                             "chosen by itself for one); default: chosen with --precision (utils.inference.auto)")
    parser.add_argument("--fast", action="store_true",
                        help="--backend fast: faster fp32 CPU inference (utils.inference.fast: NNPACK 3x3 "
                             "convolutions, one-pixel SR attention; 1.7-2x fp32 eager, outputs within 4e-5 of it as "
                             "measured in docs/benchmarks.md, more memory)")
    parser.add_argument("--tile", type=int, default=None,
                        help=f"tile images larger than this many input pixels per side (0: never; default: windows of "
                             f"at most {DEFAULT_TILE} x {DEFAULT_TILE} output pixels, e.g. {DEFAULT_TILE // 4} input "
                             f"pixels for SR x4, larger on CUDA as its free memory allows)")
    parser.add_argument("--tile_overlap", type=int, default=None,
                        help=f"overlap of neighbouring tiles in input pixels (default {DEFAULT_TILE_OVERLAP} output "
                             f"pixels, e.g. {DEFAULT_TILE_OVERLAP // 4} input pixels for SR x4)")
    parser.add_argument("--tf32", action="store_true",
                        help="let CUDA run float32 convolutions and matrix products in TF32 (Ampere and later: "
                             "faster, about 1e-3 relative error); off by default, so fp32 is IEEE float32 as the "
                             "protocols' numbers need; no effect on CPUs or with bf16")
    parser.add_argument("--bit_depth", choices=("auto", "8", "16"), default="auto",
                        help="bits per sample of restored images written from files (auto: as the input)")


def add_protocol_args(parser: argparse.ArgumentParser, data_root: str, datasets: Sequence[str]) -> None:
    """Add --data_root and --datasets, the test sets of a demo's protocol mode (see ``protocol_dirs``),
    and --save_images."""
    parser.add_argument("--data_root", default=data_root,
                        help=f"folder holding the test sets (protocol; default {data_root}, looked up in the "
                             "current folder, then beside the repository)")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help=f"test-set folders under --data_root (protocol; default: those of {' '.join(datasets)} "
                             "that are present, naming the ones skipped)")
    parser.set_defaults(default_datasets=list(datasets))
    parser.add_argument("--save_images", action="store_true",
                        help="protocol: also write the restored images, <results name>_images/DATASET/CASE/NAME.png")


def restorer_from_args(args: argparse.Namespace, task: str, default_ckpt: os.PathLike,
                       sf: Optional[int] = None, flip: bool = False, precision: str = "auto") -> Restorer:
    """Choose the device, load the model (a ``.onnx`` file with ONNX Runtime on the CPU) and wrap it in
    a Restorer, from the common flags (and a denoiser's --strength / --noise_map), printing the weights
    and the run plan (``auto.plan_run``); ``sf``: the scale factor of an SR task, ``flip``: the
    self-ensemble, ``precision``: the mode's default when --precision is not given. CUDA's TF32 is
    set from --tf32 (``utils.devices.set_tf32``; off unless given)."""
    noise = noise_control_from_args(args)
    set_tf32(bool(getattr(args, "tf32", False)))
    if Path(args.ckpt_path or "").suffix.lower() == ".onnx":
        if args.device not in (None, "", "auto", "cpu"):
            raise UserError(f"--device {args.device}: an .onnx model runs with ONNX Runtime on the CPU; "
                            f"use --device cpu, or a .pth checkpoint")
        net = load_onnx(task, args.ckpt_path, sf)
    else:
        net = load_model(task, args.ckpt_path, default_ckpt, choose_device(args.device), sf)
    print(f"weights: {net.weights_info}")
    restorer = Restorer(net, sf=sf, tile=args.tile, overlap=args.tile_overlap, precision=args.precision or precision,
                        flip=flip, backend="fast" if args.fast else args.backend, noise=noise)
    print(restorer.plan.line)
    return restorer


def _memory_errors_explained(run: Callable[[Optional[Sequence[str]]], int]) -> Callable:
    """``run`` with running out of GPU or CPU memory turned into a UserError saying what to do."""
    def wrapped(argv: Optional[Sequence[str]]) -> int:
        try:
            return run(argv)
        except torch.cuda.OutOfMemoryError:
            raise UserError("out of GPU memory; use a smaller --tile (e.g. --tile 256) or --precision bf16") from None
        except RuntimeError as err:
            if "can't allocate memory" not in str(err):
                raise
            raise UserError("out of memory; use a smaller --tile (e.g. --tile 256)") from None
    return wrapped


def report_errors(run: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """A demo's ``run(argv)`` through ``utils.errors.report_errors`` (``error: <message>``, exit
    status 1), running out of memory explained; anything unexpected gets that guard's one line and
    log file (its traceback with ``--debug``)."""
    return errors.report_errors(_memory_errors_explained(run), argv)


def input_files(in_path: os.PathLike) -> list[Path]:
    """The images that ``-i`` names: the file itself, or the image files of a folder (sorted).
    Raises UserError when the path is missing or the folder holds no image file."""
    in_path = Path(in_path)
    if not in_path.exists():
        raise UserError(f"input not found: {in_path}")
    if not in_path.is_dir():
        return [in_path]
    files = list_images(in_path)
    if not files:
        raise UserError(f"no image files (.png, .jpg, .bmp, .tif) in folder {in_path}")
    return files


def protocol_dirs(data_root: str, datasets: Optional[Sequence[str]], defaults: Sequence[str] = ()) -> dict[str, Path]:
    """Map each test-set name to its folder under ``data_root`` (looked up in the current folder,
    then beside the repository); raises UserError for a missing or empty folder.

    ``datasets`` None (no --datasets given) means those of ``defaults`` whose folder exists, with one
    line on stderr naming the ones skipped; UserError when none of them is there. A name holding a
    path ('/abs/Set14', '../x/Set14') is looked up as given and keyed by its folder's name
    (``utils.outputs.folder_name``), the name its outputs get, so that they stay inside -o."""
    root = resolve_path(data_root)
    if root is None or not root.is_dir():
        raise UserError(f"--data_root: folder not found: {data_root}")
    if datasets is None:
        datasets = [name for name in defaults if (root / name).is_dir()]
        skipped = [name for name in defaults if name not in datasets]
        if not datasets:
            raise UserError(f"none of the default test sets ({', '.join(defaults)}) is in {root}; "
                            f"see --data_root and --datasets")
        if skipped:
            print(f"note: test set{'s' if len(skipped) > 1 else ''} {', '.join(skipped)} not in {root}, skipped "
                  f"(running {', '.join(datasets)})", file=sys.stderr)
    dirs = {}
    for name in datasets:
        if folder_name(name) in dirs:
            raise UserError(f"--datasets: two test sets are both named {folder_name(name)!r}; rename one folder")
        dirs[folder_name(name)] = root / name
    for name, folder in dirs.items():
        if not folder.is_dir():
            raise UserError(f"test set {name!r} not found: no folder {folder} (see --data_root)")
        if not list_images(folder):
            raise UserError(f"test set {name!r}: no image files in {folder}")
    return dirs


def prepare_output_dir(path: os.PathLike) -> Path:
    """Create the output folder (and parents) and check it is writable; raises UserError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create output folder {path}: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"output folder {path} is not writable")
    return path


def check_no_overwrite(outputs: Sequence[os.PathLike], inputs: Sequence[os.PathLike],
                       folder: Optional[os.PathLike] = None, overwrite: bool = False) -> None:
    """Refuse (UserError) when a planned output file is an input file or is planned twice; with the
    output ``folder``, also when one lies outside it or exists and was not written by the project
    (unless ``overwrite``: ``utils.outputs.refuse_foreign``)."""
    sources = {Path(p).resolve(): Path(p) for p in inputs}
    seen: dict[Path, Path] = {}
    for out in outputs:
        key = Path(out).resolve()
        if key in sources:
            raise UserError(f"output {out} would overwrite the input {sources[key]}; "
                            "choose another --out_path or a --prefix")
        if key in seen:
            raise UserError(f"two inputs would both be written to {out}; "
                            "rename one or restore them into different folders")
        seen[key] = Path(out)
    if folder is not None:
        refuse_foreign(folder, outputs, overwrite)
