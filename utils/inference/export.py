"""Turn a trainer's weights export into a compact model-zoo file (``python -m utils.export_weights``).

    python -m utils.export_weights SRC DST [--fp16] [--note TEXT] [--force]

SRC is a weights file (``<save_dir>/models/model_last.pth`` or ``model_best.pth``, or any file
``networks.read_checkpoint`` accepts); DST receives ``{'model_state_dict', 'arch', 'meta'}``:
the weights (cast to float16 with ``--fp16``, which halves the file; the loaders cast them back
to the model's float32), the ``'arch'`` entry that rebuilds the architecture, and a ``'meta'``
dict (``note``, ``source``, ``dtype``, ``parameters``) that the demos print. The weights are
checked to load strictly into the architecture before anything is written; DST is written
atomically and an existing DST is kept unless ``--force``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch

import networks
from utils.errors import UserError, report_errors
from utils.image_io import save_torch


class ExportError(UserError, ValueError):
    """An export that cannot be done; the message is one line naming the file."""


def compact_checkpoint(src: str | Path, fp16: bool = False, note: str = "") -> dict:
    """The model-zoo dict of the weights file ``src`` (see the module docstring).

    Raises ``ExportError`` when ``src`` has no 'arch' entry or its weights do not load strictly
    into that architecture, and ``networks.CheckpointError`` when it cannot be read.
    """
    ckpt = networks.read_checkpoint(src)
    arch = ckpt.get("arch")
    if not isinstance(arch, dict) or arch.get("task") not in networks.TASKS:
        raise ExportError(f"{src} has no 'arch' entry (export weights written by this project's trainers)")
    net = networks.build_model(arch["task"], **arch.get("kwargs", {}))
    networks.load_checkpoint(net, src, ckpt)
    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    if fp16 and not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ExportError(f"{src}: some weights overflow float16; export without --fp16")
    meta = {"note": note, "source": Path(src).name, "dtype": str(dtype).replace("torch.", ""),
            "parameters": sum(p.numel() for p in net.parameters())}
    return {"model_state_dict": state, "arch": arch, "meta": meta}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; returns the exit code (errors: one line on stderr, exit 1)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="weights file written by a trainer (models/model_last.pth)")
    parser.add_argument("dst", help="model-zoo file to write")
    parser.add_argument("--fp16", action="store_true", help="store the weights as float16")
    parser.add_argument("--note", default="", help="one line describing the weights (printed by the demos)")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    args = parser.parse_args(argv)
    return report_errors(lambda _: _export(args.src, Path(args.dst), args.fp16, args.note, args.force))


def _export(src: str, dst: Path, fp16: bool, note: str, force: bool) -> int:
    """Write the model-zoo file ``dst`` of ``src`` (see ``main``); returns 0."""
    if dst.exists() and not force:
        raise ExportError(f"{dst} exists; pass --force to replace it")
    ckpt = compact_checkpoint(src, fp16, note)
    save_torch(ckpt, dst)
    print(f"wrote {dst} ({dst.stat().st_size / 2 ** 20:.2f} MiB, {ckpt['meta']['parameters'] / 1e6:.2f} M "
          f"parameters, {ckpt['meta']['dtype']})")
    return 0
