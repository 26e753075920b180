"""Tiled CPU inference of a large image by the synthetic-noise denoiser: wall time, peak memory
and the tiling error.

The network is the released ``denoising-syn`` architecture (10.5 M parameters) with seeded random
weights (``torch.manual_seed(0)``), or the weights of ``--ckpt_path``; ``--fast`` runs it through
``utils.inference.fast.optimize_for_inference``. The input is a seeded uniform-noise RGB image of
``--size WxH`` (the work per pixel does not depend on the content).

1. Tiled run: a child process builds the network and the input, then runs
   ``utils.inference.run_model(net, x, tile=--tile, overlap=--tile_overlap)`` once. Reported: its
   wall time, the number of windows, the child's resident set size before the call and its peak
   (``ru_maxrss``: the whole process, torch and the network included; the input and the blended
   outputs are part of it, 2 x 4 bytes x 3 x H x W for the input and mu alone).
2. Tiling error on a crop: the ``--crop`` x ``--crop`` square at the image centre (it crosses
   window seams) is restored whole, untiled, in this process and compared with the same region
   of the tiled result. The crop's own border saw a different context (the crop edge instead of
   the rest of the image), so the max abs difference of ``mu`` is reported over the interior
   (``--margin`` pixels from each side dropped) and, for information, over the whole crop.
3. With ``--untiled``: the whole image untiled in a second child (time, peak memory), and the
   exact max abs difference of tiled ``mu`` from it over the crop region.

Run ``python bench/tiling.py --help``; results go to ``bench/results/tiling_cpu.json``.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import networks  # noqa: E402
from bench.common import RESULTS_DIR, command_line, machine_info, versions  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.inference import (DEFAULT_TILE, DEFAULT_TILE_OVERLAP, load_model, markdown_table,  # noqa: E402
                             run_model, tile_spans, tiling_params, write_json)
from utils.inference.fast import optimize_for_inference  # noqa: E402

TASK = "denoising-syn"
SEED = 0
CHILD = "_child"
"""First argument of the child mode: ``tiling.py _child RUN_JSON`` (the run as JSON)."""
EARLIER_FULL_RUN = {
    "command": "demo_test_syn.py -i big_4000x3000.png", "size": "4000x3000", "tiles": 63,
    "tile": 512, "tile_overlap": 64, "cpu_minutes": 35, "wall_minutes": 54, "peak_rss_gb": 1.81,
    "note": "measured earlier on this machine while other jobs ran; not rerun by this script"}


def parse_size(text: str) -> Tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"sides must be positive, got {text!r}")
    return width, height


def build_net(ckpt_path: Optional[str], fast: bool) -> nn.Module:
    """The denoiser on the CPU in eval mode: seeded random weights or ``ckpt_path``'s."""
    cpu = torch.device("cpu")
    if ckpt_path:
        net = load_model(TASK, ckpt_path, ckpt_path, cpu)
    else:
        torch.manual_seed(SEED)
        net = networks.build_model(TASK).eval()
    return optimize_for_inference(net, cpu) if fast else net


def make_input(width: int, height: int) -> torch.Tensor:
    """The seeded 1 x 3 x H x W input in [0, 1)."""
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(SEED))


def rss_mb() -> float:
    """This process's resident set size now, in MiB (/proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec_json: str) -> None:
    """Child mode: one run of ``run_model`` as ``spec`` says; writes time, memory and the crop of
    ``mu`` to ``spec['out']`` (a torch file)."""
    spec = json.loads(spec_json)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    net = build_net(spec["ckpt_path"], spec["fast"])
    x = make_input(*spec["size"])
    before = rss_mb()
    start = time.perf_counter()
    (mu, _sigma), tiled = run_model(net, x, tile=spec["tile"], overlap=spec["overlap"])
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    top, left, side = spec["crop"]
    torch.save({"wall_s": wall, "tiled": tiled, "rss_before_mb": before, "peak_rss_mb": peak,
                "threads": torch.get_num_threads(),
                "crop_mu": mu[..., top:top + side, left:left + side].clone()}, spec["out"])


def run_child(spec: dict) -> dict:
    """Run ``child`` in a fresh process; returns what it saved."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), CHILD, json.dumps(spec)],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("child failed: " + " | ".join(proc.stderr.strip().splitlines()[-5:]))
    return torch.load(spec["out"], weights_only=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(4000, 3000), metavar="WxH",
                        help="input image size")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="window side (pixels)")
    parser.add_argument("--tile_overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                        help="overlap of neighbouring windows (pixels)")
    parser.add_argument("--fast", action="store_true", help="utils.inference.fast.optimize_for_inference")
    parser.add_argument("--ckpt_path", default=None,
                        help="denoising-syn weights (default: seeded random weights)")
    parser.add_argument("--crop", type=int, default=512,
                        help="side of the centre crop restored whole for the comparison")
    parser.add_argument("--margin", type=int, default=64,
                        help="border of the crop left out of the interior comparison")
    parser.add_argument("--untiled", action="store_true",
                        help="also run the whole image untiled (slow, memory-hungry)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: bench/results/tiling_cpu.json)")
    args = parser.parse_args(argv)
    width, height = args.size
    if not 0 < args.crop <= min(width, height):
        parser.error(f"--crop must be in 1..{min(width, height)} (the shorter side)")
    if not 0 <= 2 * args.margin < args.crop:
        parser.error("--margin must be >= 0 and leave an interior (2 * margin < crop)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the benchmark; returns the JSON record, also written to disk."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = args.size
    net = build_net(args.ckpt_path, args.fast)
    multiple = net.pad_multiple
    tile, overlap = tiling_params(args.tile, args.tile_overlap, multiple)
    windows = (len(tile_spans(height, tile, overlap, multiple))
               * len(tile_spans(width, tile, overlap, multiple)))
    top, left = (height - args.crop) // 2, (width - args.crop) // 2
    crop_box = (top, left, args.crop)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"size": [width, height], "tile": args.tile, "overlap": args.tile_overlap,
                "fast": args.fast, "ckpt_path": args.ckpt_path, "threads": args.threads,
                "crop": crop_box, "out": str(Path(tmp) / "tiled.pt")}
        print(f"tiled {width}x{height}, {windows} windows ...", file=sys.stderr, flush=True)
        tiled = run_child(spec)
        untiled = None
        if args.untiled:
            print(f"untiled {width}x{height} ...", file=sys.stderr, flush=True)
            untiled = run_child({**spec, "tile": 0, "out": str(Path(tmp) / "untiled.pt")})
    print(f"crop {args.crop}x{args.crop} whole ...", file=sys.stderr, flush=True)
    x = make_input(width, height)[..., top:top + args.crop, left:left + args.crop]
    crop_start = time.perf_counter()
    (crop_mu, _sigma), _ = run_model(net, x, tile=0)
    crop_s = time.perf_counter() - crop_start
    diff = (tiled["crop_mu"] - crop_mu).abs()
    m = args.margin
    interior = diff[..., m:args.crop - m, m:args.crop - m] if m else diff
    mp = width * height / 1e6
    runs = [{"mode": "tiled", "windows": windows, "wall_s": tiled["wall_s"],
             "s_per_mp": tiled["wall_s"] / mp, "rss_before_mb": tiled["rss_before_mb"],
             "peak_rss_mb": tiled["peak_rss_mb"], "threads": tiled["threads"]}]
    if untiled is not None:
        runs.append({"mode": "untiled", "windows": 1, "wall_s": untiled["wall_s"],
                     "s_per_mp": untiled["wall_s"] / mp, "rss_before_mb": untiled["rss_before_mb"],
                     "peak_rss_mb": untiled["peak_rss_mb"], "threads": untiled["threads"]})
    record = {
        "benchmark": "tiling", "command": command_line(),
        "machine": machine_info(torch.device("cpu")), "versions": versions(),
        "settings": {"task": TASK, "size": [width, height], "tile": tile, "tile_overlap": overlap,
                     "fast": args.fast, "weights": args.ckpt_path or f"random (seed {SEED})",
                     "threads": args.threads, "crop": args.crop, "crop_top_left": [top, left],
                     "margin": args.margin, "untiled": args.untiled},
        "total_s": time.perf_counter() - started,
        "runs": runs,
        "crop_check": {"crop_whole_s": crop_s,
                       "max_abs_diff_mu_interior": interior.max().item(),
                       "max_abs_diff_mu_whole_crop": diff.max().item(),
                       "max_abs_diff_mu_vs_untiled_image": (
                           (tiled["crop_mu"] - untiled["crop_mu"]).abs().max().item()
                           if untiled is not None else None)},
        "earlier_full_run": EARLIER_FULL_RUN,
    }
    out = args.out or RESULTS_DIR / "tiling_cpu.json"
    write_json(out, record)
    print(results_table(record))
    print(f"wrote {out}")
    return record


def results_table(record: dict) -> str:
    """The runs and the crop check as a markdown table."""
    s, check = record["settings"], record["crop_check"]
    size = "x".join(str(v) for v in s["size"])
    body = [[size, r["mode"], s["tile"] if r["mode"] == "tiled" else "-",
             s["tile_overlap"] if r["mode"] == "tiled" else "-", r["windows"],
             "yes" if s["fast"] else "no", r["threads"], f"{r['wall_s']:.1f}",
             f"{r['s_per_mp']:.1f}", f"{r['rss_before_mb']:.0f}", f"{r['peak_rss_mb']:.0f}"]
            for r in record["runs"]]
    table = markdown_table(["size", "mode", "tile", "overlap", "windows", "fast", "threads",
                            "wall s", "s/MP", "RSS before MiB", "peak RSS MiB"], body, pad=False).rstrip("\n")
    lines = [table, "",
             f"crop {s['crop']}x{s['crop']} at (top, left) = {tuple(s['crop_top_left'])} restored "
             f"whole in {check['crop_whole_s']:.1f} s; max |Δmu| tiled vs whole crop: "
             f"{check['max_abs_diff_mu_interior']:.2e} over the interior (margin {s['margin']}), "
             f"{check['max_abs_diff_mu_whole_crop']:.2e} over the whole crop"]
    if check["max_abs_diff_mu_vs_untiled_image"] is not None:
        lines.append(f"max |Δmu| tiled vs untiled whole image over the crop: "
                     f"{check['max_abs_diff_mu_vs_untiled_image']:.2e}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == [CHILD]:
        child(sys.argv[2])
    else:
        run_main(main)
