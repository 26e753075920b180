"""Does a faster inference path cost quality? CBSD68 PSNR of each path against fp32 eager.

Restores the images of a folder (default ``../shared/testsets/CBSD68``) with i.i.d. Gaussian noise
(``--sigma``, 0-255 scale, drawn from ``default_rng(0)`` image by image, the same for every path)
through the synthetic denoiser (default: the shipped compact weights; ``--ckpt_path`` for
others, e.g. the authors' released file), once per path, as the demos run it (``Restorer``:
padding, tiling, clipping and uint8 quantisation before PSNR):

* ``fp32``: the baseline;
* ``bf16``: bfloat16 autocast, channels-last on CUDA (the demos' ``--precision bf16``); not in
  the CPU default (slow on CPUs without native bf16 units);
* ``fast``: the ``fast`` backend, ``utils.inference.fast.optimize_for_inference`` (the demos' ``--fast``).

Reports per path the mean PSNR, its difference from fp32 (issue 9's target on CUDA: within
0.01 dB for bf16), the largest per-image difference and the total time, as a markdown table and
``bench/results/quality_<device>.json``.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import RESULTS_DIR, baseline_first, command_line, machine_info, versions  # noqa: E402
from utils.devices import choose_device  # noqa: E402
from utils.image_io import list_images, read_image_uint8  # noqa: E402
from utils.inference import Restorer, load_model, markdown_table, write_json  # noqa: E402
from utils.metrics import calculate_psnr  # noqa: E402

PATHS = ("fp32", "bf16", "fast")
TOLERANCE_DB = 0.01
DEFAULT_CKPT = ROOT / "model_zoo" / "virnet_denoising_syn_compact.pth"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", type=Path, default=DEFAULT_CKPT, help="synthetic-denoising weights")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testsets" / "CBSD68",
                        help="folder of clean test images (default ../shared/testsets/CBSD68)")
    parser.add_argument("--images", type=int, default=None, help="use only the first N images")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise std, 0-255 scale (default 25)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=None,
                        help="paths besides fp32 (default: bf16 and fast on CUDA, fast on the CPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/quality_<device>.json)")
    args = parser.parse_args(argv)
    args.device = choose_device(args.device).type
    if args.paths is None:
        args.paths = ["bf16", "fast"] if args.device == "cuda" else ["fast"]
    args.paths = baseline_first(args.paths)
    if not args.data.is_dir() or not list_images(args.data):
        parser.error(f"no test images in {args.data}")
    return args


def path_psnrs(name: str, ckpt: Path, device: torch.device, pairs: Sequence[tuple]) -> tuple[List[float], float]:
    """Restore every (clean uint8, noisy float32) pair through path ``name``; returns the
    per-image PSNRs and the seconds the restorations took."""
    net = load_model("denoising-syn", str(ckpt), ckpt, device)
    restorer = Restorer(net, precision="bf16" if name == "bf16" else "fp32",
                        backend="fast" if name == "fast" else "eager")
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
    for name in args.paths:
        print(f"{name} ...", file=sys.stderr, flush=True)
        psnrs, seconds = path_psnrs(name, args.ckpt_path, device, pairs)
        rows.append({"path": name, "mean_psnr": float(np.mean(psnrs)), "psnrs": psnrs, "seconds": seconds})
    base = np.array(rows[0]["psnrs"])
    for row in rows:
        row["delta_db"] = row["mean_psnr"] - rows[0]["mean_psnr"]
        row["max_image_delta_db"] = float(np.abs(np.array(row["psnrs"]) - base).max())
        row["within_tolerance"] = abs(row["delta_db"]) <= TOLERANCE_DB
    record = {"benchmark": "quality", "command": command_line(), "machine": machine_info(device),
              "versions": versions(),
              "settings": {"ckpt_path": str(args.ckpt_path), "data": str(args.data), "images": len(files),
                           "sigma": args.sigma, "paths": args.paths, "threads": args.threads},
              "tolerance_db": TOLERANCE_DB, "results": rows}
    out = args.out or RESULTS_DIR / f"quality_{device.type}.json"
    write_json(out, record)
    print(markdown_table(["path", "mean PSNR", "Δ vs fp32 (dB)", "max image Δ (dB)", "seconds"],
                         [[r["path"], f"{r['mean_psnr']:.3f}", f"{r['delta_db']:+.4f}",
                           f"{r['max_image_delta_db']:.4f}", f"{r['seconds']:.1f}"] for r in rows],
                         pad=False), end="")
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
