"""Turn a trainer's weights export into a compact model-zoo file (``python -m utils.export_weights``),
or any checkpoint into an ONNX file for ONNX Runtime.

    python -m utils.export_weights SRC DST [--fp16] [--note TEXT] [--force] [--n_feat W1 W2 ...] [--n_resblocks N]
    python -m utils.export_weights SRC DST.onnx [--task TASK] [--sf N] [--note TEXT] [--force]

SRC is a weights file (``<save_dir>/models/model_last.pth`` or ``model_best.pth``, or any file
``networks.read_checkpoint`` accepts, a model-zoo file included); DST receives
``{'model_state_dict', 'arch', 'meta'}``: the weights (cast to float16 with ``--fp16``, which
halves the file; the loaders cast them back to the model's float32), the ``'arch'`` entry that
rebuilds the architecture, and a ``'meta'`` dict (``note``, ``source``, ``dtype``,
``parameters``) that the demos print. Without ``--note`` the note (and source) SRC records are
kept, so converting a model-zoo file keeps its description. A DST ending in ``.safetensors`` is
written in the safetensors format (tensors only, loading runs no code; ``arch`` and ``meta`` as
JSON in its metadata, ``networks.read_safetensors``), any other as a ``torch.save`` file. The
weights are checked to load strictly into the architecture before anything is written; DST is
written atomically and an existing DST is kept unless ``--force``. With ``--n_feat`` and / or
``--n_resblocks`` DST holds SRC grown to those R-Net widths / residual blocks per level without
changing its output (``networks.widen``): the start of a larger model's training (``--opt
init_weights=DST --opt n_feat=[W1,W2,...] --opt n_resblocks=N``).

A DST ending in ``.onnx`` receives the ONNX export of SRC, which may then be any checkpoint the demos
load (the authors' released files too; ``--task`` / ``--sf`` when SRC does not tell them): see
``onnx_export``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import save as safetensors_bytes

import networks
from utils.errors import UserError, report_errors
from utils.image_io import atomic_write, save_torch


class ExportError(UserError, ValueError):
    """An export that cannot be done; the message is one line naming the file."""


def compact_checkpoint(src: str | Path, fp16: bool = False, note: Optional[str] = None,
                       n_feat: Optional[Sequence[int]] = None, n_resblocks: Optional[int] = None) -> dict:
    """The model-zoo dict of the weights file ``src`` (see the module docstring); ``note`` None keeps
    the note and source that ``src`` records (none: '' and the name of ``src``); ``n_feat`` /
    ``n_resblocks``: grow the R-Net to these widths / blocks per level first (``networks.widen``).

    Raises ``ExportError`` when ``src`` has no 'arch' entry or its weights do not load strictly
    into that architecture, and ``networks.CheckpointError`` when it cannot be read.
    """
    ckpt = networks.read_checkpoint(src)
    arch = ckpt.get("arch")
    if not isinstance(arch, dict) or arch.get("task") not in networks.TASKS:
        raise ExportError(f"{src} has no 'arch' entry (export weights written by this project's trainers)")
    net = networks.build_model(arch["task"], **arch.get("kwargs", {}))
    networks.load_checkpoint(net, src, ckpt)
    if n_feat is not None or n_resblocks is not None:
        try:
            net = networks.widen(net, n_feat, n_resblocks=n_resblocks)
        except ValueError as err:
            raise ExportError(f"{src}: {err}") from None
        arch = {**arch, "kwargs": net.arch["kwargs"]}
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    if fp16 and not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ExportError(f"{src}: some weights overflow float16; export without --fp16")
    recorded = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) and note is None else {}
    meta = {"note": recorded.get("note", note or ""), "source": recorded.get("source", Path(src).name),
            "dtype": str(dtype).replace("torch.", ""), "parameters": sum(p.numel() for p in net.parameters())}
    return {"model_state_dict": state, "arch": arch, "meta": meta}


def save_checkpoint(ckpt: dict, dst: Path) -> None:
    """Write a model-zoo dict atomically: as safetensors when ``dst`` ends in ``.safetensors`` (the
    'arch' and 'meta' entries as JSON metadata, see ``networks.read_safetensors``), else with
    ``torch.save``."""
    if dst.suffix.lower() != networks.SAFETENSORS_SUFFIX:
        save_torch(ckpt, dst)
        return
    state = {key: value.contiguous() for key, value in ckpt["model_state_dict"].items()}
    metadata = {"format": "pt", **{key: json.dumps(ckpt[key]) for key in networks.SAFETENSORS_ENTRIES
                                   if key in ckpt}}
    data = safetensors_bytes(state, metadata)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda tmp: tmp.write_bytes(data))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; returns the exit code (errors: one line on stderr, exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="weights file written by a trainer (models/model_last.pth)")
    parser.add_argument("dst", help="model-zoo file to write (DST.safetensors: the safetensors format)")
    parser.add_argument("--fp16", action="store_true", help="store the weights as float16")
    parser.add_argument("--note", default=None,
                        help="one line describing the weights (printed by the demos; default: the note SRC records)")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    parser.add_argument("--n_feat", type=int, nargs="+", default=None, metavar="W",
                        help="widen the R-Net to these widths, one per level, keeping its output (a start for "
                             "training a wider model with init_weights)")
    parser.add_argument("--n_resblocks", type=int, default=None, metavar="N",
                        help="grow the R-Net to N residual blocks per level, keeping its output (new blocks "
                             "start as identities)")
    parser.add_argument("--task", choices=tuple(networks.TASKS), default=None,
                        help="DST.onnx: the task of SRC when neither its 'arch' entry nor its weights tell it")
    parser.add_argument("--sf", type=int, default=None,
                        help="DST.onnx of an SR checkpoint: the scale factor (default: the one SRC records)")
    args = parser.parse_args(argv)
    if Path(args.dst).suffix.lower() == ".onnx":
        return report_errors(lambda _: _export_onnx(args))
    return report_errors(lambda _: _export(args.src, Path(args.dst), args.fp16, args.note, args.force, args.n_feat,
                                                args.n_resblocks))


def _export_onnx(args: argparse.Namespace) -> int:
    """Write the ONNX export of ``args.src`` (``onnx_export.export_onnx``); returns 0."""
    if args.fp16:
        raise ExportError("--fp16 applies to model-zoo files; an ONNX export keeps float32 weights")
    if args.n_feat or args.n_resblocks:
        raise ExportError("--n_feat / --n_resblocks apply to model-zoo files; export the grown file, then its ONNX")
    from .onnx_export import export_onnx  # torch.onnx and the exporter load for ONNX exports only
    return export_onnx(Path(args.src), Path(args.dst), args.task, args.sf, args.note, args.force)


def _export(src: str, dst: Path, fp16: bool, note: Optional[str], force: bool,
            n_feat: Optional[Sequence[int]] = None, n_resblocks: Optional[int] = None) -> int:
    """Write the model-zoo file ``dst`` of ``src`` (see ``main``); returns 0."""
    if dst.exists() and not force:
        raise ExportError(f"{dst} exists; pass --force to replace it")
    ckpt = compact_checkpoint(src, fp16, note, n_feat, n_resblocks)
    save_checkpoint(ckpt, dst)
    print(f"wrote {dst} ({dst.stat().st_size / 2 ** 20:.2f} MiB, {ckpt['meta']['parameters'] / 1e6:.2f} M "
          f"parameters, {ckpt['meta']['dtype']})")
    return 0
