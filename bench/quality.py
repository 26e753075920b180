"""Does a faster inference path cost quality? CBSD68 PSNR of each path against fp32 eager.

Restores the images of a folder (default ``../shared/testsets/CBSD68``) with i.i.d. Gaussian noise
(``--sigma``, 0-255 scale, drawn from ``default_rng(0)`` image by image, the same for every path)
through the synthetic denoiser (default: the shipped compact weights; ``--ckpt_path`` for
others, e.g. the authors' released file), once per path, as the demos run it (``Restorer``:
padding, tiling, clipping and uint8 quantisation before PSNR):

* ``fp32``: the baseline;
* ``bf16``: bfloat16 autocast, channels-last on CUDA (the demos' ``--precision bf16``); not in
  the CPU default (slow on CPUs without native bf16 units);
* ``fast``: the ``fast`` backend, ``utils.inference.fast.optimize_for_inference`` (the demos' ``--fast``);
* ``auto``: the demos' default ``--precision auto`` (``utils.inference.auto``: bf16 + channels-last where
  the device computes bf16 natively, else ``fast`` on the CPU); the record keeps its ``run:`` line;
* ``onnx``: the weights exported to ONNX (``utils.inference.onnx_export``) and run by ONNX Runtime
  (CPU; the export is not timed).

Reports per path the mean PSNR, its difference from fp32 (target: within 0.01 dB for bf16 and for
auto), the largest per-image difference and the total time, as a markdown table and
``bench/results/quality_<device>[_<cpu class>].json`` (the CPU class, ``bench.common.cpu_class``,
decides what auto runs).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import (RESULTS_DIR, baseline_first, class_slug, command_line, machine_info,  # noqa: E402
                          versions)
from utils.errors import run_main  # noqa: E402
from utils.devices import choose_device  # noqa: E402
from utils.image_io import list_images, read_image_uint8  # noqa: E402
from utils.inference import Restorer, load_model, markdown_table, write_json  # noqa: E402
from utils.inference.onnx_backend import load_onnx  # noqa: E402
from utils.inference.onnx_export import write_onnx  # noqa: E402
from utils.metrics import calculate_psnr  # noqa: E402

PATHS = ("fp32", "bf16", "fast", "auto", "onnx")
TASK = "denoising-syn"
TOLERANCE_DB = 0.01
DEFAULT_CKPT = ROOT / "model_zoo" / "virnet_denoising_syn_compact.safetensors"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", type=Path, default=DEFAULT_CKPT, help="synthetic-denoising weights")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testsets" / "CBSD68",
                        help="folder of clean test images (default ../shared/testsets/CBSD68)")
    parser.add_argument("--images", type=int, default=None, help="use only the first N images")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise std, 0-255 scale (default 25)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                        help="paths besides fp32 (default: bf16, fast, auto on CUDA; fast, auto, onnx on the CPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/quality_<device>.json)")
    args = parser.parse_args(argv)
    args.device = choose_device(args.device).type
    if args.paths is None:
        args.paths = ["bf16", "fast", "auto"] if args.device == "cuda" else ["fast", "auto", "onnx"]
    args.paths = baseline_first(args.paths)
    if not args.data.is_dir() or not list_images(args.data):
        parser.error(f"no test images in {args.data}")
    return args


def path_restorer(name: str, ckpt: Path, device: torch.device, folder: Path) -> Restorer:
    """The Restorer of path ``name`` for the weights ``ckpt`` (``folder``: where the ONNX export goes)."""
    net = load_model(TASK, str(ckpt), ckpt, device)
    if name == "onnx":
        write_onnx(net, None, folder / "model.onnx", source=ckpt.name)
        return Restorer(load_onnx(TASK, folder / "model.onnx"))
    return Restorer(net, precision={"bf16": "bf16", "auto": "auto"}.get(name, "fp32"),
                    backend="fast" if name == "fast" else None)


def path_psnrs(restorer: Restorer, pairs: Sequence[tuple]) -> tuple[List[float], float]:
    """Restore every (clean uint8, noisy float32) pair; returns the per-image PSNRs and the seconds
    the restorations took."""
    psnrs, started = [], time.perf_counter()
    for clean, noisy in pairs:
        psnrs.append(calculate_psnr(restorer(noisy).image, clean))
    return psnrs, time.perf_counter() - started


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the comparison; returns the JSON record, also written to disk."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    files = list_images(args.data)[:args.images]
    rng = np.random.default_rng(0)
    pairs = []
    for path in files:
        clean = read_image_uint8(path)
        noise = rng.standard_normal(clean.shape) * (args.sigma / 255)
        pairs.append((clean, (clean / 255 + noise).astype(np.float32)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.paths:
            print(f"{name} ...", file=sys.stderr, flush=True)
            restorer = path_restorer(name, args.ckpt_path, device, Path(tmp))
            psnrs, seconds = path_psnrs(restorer, pairs)
            rows.append({"path": name, "plan": restorer.plan.line, "mean_psnr": float(np.mean(psnrs)),
                         "psnrs": psnrs, "seconds": seconds})
    base = np.array(rows[0]["psnrs"])
    for row in rows:
        row["delta_db"] = row["mean_psnr"] - rows[0]["mean_psnr"]
        row["max_image_delta_db"] = float(np.abs(np.array(row["psnrs"]) - base).max())
        row["within_tolerance"] = abs(row["delta_db"]) <= TOLERANCE_DB
    machine = machine_info(device)
    record = {"benchmark": "quality", "command": command_line(), "machine": machine,
              "versions": versions(),
              "settings": {"ckpt_path": str(args.ckpt_path), "data": str(args.data), "images": len(files),
                           "sigma": args.sigma, "paths": args.paths, "threads": args.threads},
              "tolerance_db": TOLERANCE_DB, "results": rows}
    cpu_class = "" if device.type == "cuda" else f"_{class_slug(machine['cpu_class'])}"
    out = args.out or RESULTS_DIR / f"quality_{device.type}{cpu_class}.json"
    write_json(out, record)
    print(markdown_table(["path", "mean PSNR", "Δ vs fp32 (dB)", "max image Δ (dB)", "seconds"],
                         [[r["path"], f"{r['mean_psnr']:.3f}", f"{r['delta_db']:+.4f}",
                           f"{r['max_image_delta_db']:.4f}", f"{r['seconds']:.1f}"] for r in rows],
                         pad=False), end="")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    run_main(main)
