"""Does spatially varying noise cost a denoiser more than uniform noise of the same level?

    python bench/noise_levels.py --images 12

The non-i.i.d. protocol's inputs (CBSD68, cases 1-3, ``datasets.synthetic_test_pairs``) are
restored as the protocol restores them, with the model's own noise estimate, and each pixel's
squared error is filed under its true noise level (bins of 5 on the 0-255 scale, 10-75). Each image
is also restored under uniform (i.i.d.) noise at every bin's centre level, and the error of the
same pixels is filed under the same bin. Per case and bin the two pooled PSNRs (RGB, uint8 output,
border 0) then compare one image content at one noise level, spatially varying against uniform; the
'all' rows pool each case's pixels, the uniform column weighting the bins as the case does. Equal
columns mean the model handles the varying map as well as its uniform skill predicts, so a case's
score is set by how the model denoises at those levels.

Writes ``OUT.{csv,json,md}`` (per case and bin, machine, command) and prints the table.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import command_line, machine_info, versions  # noqa: E402
from bench.estimator_oracle import cropped  # noqa: E402
from datasets.noise_maps import SIGMA_MAX, SIGMA_MIN, niid_noise_maps, resize_map  # noqa: E402
from datasets.synthetic_test import SEED, synthetic_test_pairs  # noqa: E402
from networks import default_weights  # noqa: E402
from networks.attresunet import pad_to_multiple  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.image_io import to_uint8  # noqa: E402
from utils.inference import load_model, markdown_table, write_results  # noqa: E402

TESTSETS = ROOT.parent / "shared" / "testsets"
BIN_WIDTH = 5.0
"""Width of a noise-level bin on the 0-255 scale."""
UNIFORM_SEED = 2025
"""Seed of the uniform noise (the non-i.i.d. inputs are the protocol's own)."""


def level_bins() -> np.ndarray:
    """Bin edges on the 0-255 scale covering the protocol's map range [10, 75]."""
    low, high = SIGMA_MIN * 255, SIGMA_MAX * 255
    return np.arange(round(low), round(high) + BIN_WIDTH / 2, BIN_WIDTH)


def pixel_errors(net: torch.nn.Module, noisy: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Squared error per pixel (mean over RGB) of the model's restoration of ``noisy`` (H x W x 3
    float, [0, 1] plus noise) against ``gt`` (H x W x 3 uint8), the output quantised to uint8 as the
    protocol scores it. Returns an H x W float64 array on the [0, 1] scale."""
    x = pad_to_multiple(torch.from_numpy(noisy.astype(np.float32)).permute(2, 0, 1)[None], net.pad_multiple)
    mu, _ = net(x)
    out = to_uint8(cropped(mu, *gt.shape[:2])).astype(np.float64)
    return (((out - gt) / 255) ** 2).mean(axis=2)


def uniform_errors(net: torch.nn.Module, gt: np.ndarray, levels: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """``pixel_errors`` of ``gt`` under uniform Gaussian noise of each std in ``levels`` (0-255),
    stacked: len(levels) x H x W."""
    clean = gt.astype(np.float64) / 255
    return np.stack([pixel_errors(net, clean + rng.standard_normal(gt.shape) * level / 255, gt) for level in levels])


def psnr(sq_sum: float, count: int) -> float:
    """PSNR in dB of a pooled squared-error sum over ``count`` pixels ([0, 1] scale)."""
    return float(10 * np.log10(count / sq_sum))


def collect(net: torch.nn.Module, images: int) -> list[dict]:
    """Per case and level bin: pixels, pooled PSNR under the case's map and under uniform noise
    at the bin's centre, over the first ``images`` CBSD68 images; then one 'all' row per case."""
    edges = level_bins()
    centres = (edges[:-1] + edges[1:]) / 2
    maps = niid_noise_maps(np.random.default_rng(SEED))  # the protocol builds them from its seed first
    rng = np.random.default_rng(UNIFORM_SEED)
    uniform: dict[str, np.ndarray] = {}
    sums: dict[int, np.ndarray] = {}  # case -> (pixels, varying error sum, uniform error sum) x bins
    seen: dict[int, int] = {}
    for _, case, name, gt, noisy in synthetic_test_pairs("niid", {"CBSD68": TESTSETS / "CBSD68"}):
        seen[case] = seen.get(case, 0) + 1
        if seen[case] > images:
            continue
        if name not in uniform:
            uniform[name] = uniform_errors(net, gt, centres, rng)
        level = resize_map(maps[case - 1], gt.shape[1], gt.shape[0]) * 255
        which = np.clip(np.digitize(level, edges) - 1, 0, len(centres) - 1)
        same_level = np.take_along_axis(uniform[name], which[None], axis=0)[0]  # uniform noise at each pixel's bin
        sums.setdefault(case, np.zeros((3, len(centres))))
        sums[case] += [np.bincount(which.ravel(), weights=errors.ravel(), minlength=len(centres))
                       for errors in (np.ones_like(level), pixel_errors(net, noisy, gt), same_level)]
    rows = []
    for case, (counts, varying, same) in sums.items():
        for b in np.flatnonzero(counts):
            rows.append({"case": case, "bin": f"{edges[b]:.0f}-{edges[b + 1]:.0f}", "pixels": int(counts[b]),
                         "psnr_varying": psnr(varying[b], counts[b]), "psnr_uniform": psnr(same[b], counts[b])})
        total = counts.sum()
        rows.append({"case": case, "bin": "all", "pixels": int(total),
                     "psnr_varying": psnr(varying.sum(), total), "psnr_uniform": psnr(same.sum(), total)})
    return rows


def table(rows: Sequence[dict]) -> str:
    """Bins down, cases across: 'varying / uniform' PSNR per cell, '-' where a case has no pixel."""
    cases = sorted({r["case"] for r in rows})
    bins = list(dict.fromkeys(r["bin"] for r in rows if r["bin"] != "all")) + ["all"]
    cell = {(r["case"], r["bin"]): f"{r['psnr_varying']:.2f} / {r['psnr_uniform']:.2f}" for r in rows}
    header = ["std (0-255)"] + [f"case {c}: varying / uniform" for c in cases]
    return markdown_table(header, [[b] + [cell.get((c, b), "-") for c in cases] for b in bins])


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the comparison; returns the JSON record, also written to OUT.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", default=None, help="weights (default: the shipped compact denoiser)")
    parser.add_argument("--images", type=int, default=12, help="the first N CBSD68 images per case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "noise_levels_denoising-syn",
                        help="results stem")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    if args.threads:
        torch.set_num_threads(args.threads)
    task = "denoising-syn"
    net = load_model(task, args.ckpt_path, default_weights(task), torch.device("cpu"))
    with torch.inference_mode():
        rows = collect(net, args.images)
    text = table(rows)
    record = {"benchmark": "noise_levels", "command": command_line(), "machine": machine_info(torch.device("cpu")),
              "versions": versions(), "task": task, "weights": net.weights_info, "images": args.images,
              "uniform_seed": UNIFORM_SEED, "bin_width_255": BIN_WIDTH, "rows": rows}
    write_results(args.out, rows, record, text,
                  f"first {args.images} CBSD68 images: PSNR of the pixels at each true noise level, "
                  "varying map (protocol) / uniform noise")
    return record


if __name__ == "__main__":
    run_main(main)
