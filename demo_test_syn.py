#!/usr/bin/env python
"""VIRNet synthetic denoising: restore your images, take a quick look with added noise, or run the
paper's test protocol (Tables 1 and 2).

  restore     python demo_test_syn.py -i IMAGE|FOLDER -o DIR
              writes NAME.png (restored) and NAME_noise_std.png (heat map of the estimated noise
              std, 0-255 units) per image.
  quick look  python demo_test_syn.py -i IMAGE|FOLDER -o DIR --add_noise 25     (or niid)
              adds Gaussian noise to clean inputs first (std in 0-255 units, or the non-i.i.d.
              'peaks' map of the protocol's case 1), also writes NAME_noisy.png, NAME_compare.png
              (noisy | restored | clean) and quicklook.{csv,json,md} with PSNR/SSIM.
  protocol    python demo_test_syn.py --protocol niid --data_root test_data --datasets CBSD68 McMaster
              the reference protocol (datasets.synthetic_test_pairs); writes
              virnet_denoising_{niid|iid}.{csv,json,md} (per image and means, beside the noisy input's
              scores as the baseline) and prints the table.
  no -i       a quick look at scikit-image's 'chelsea' sample with non-i.i.d. noise.

Weights: the shipped compact model (model_zoo/virnet_denoising_syn_compact.pth) unless --ckpt_path
names others, e.g. the authors' released model_zoo/virnet_denoising_syn.pth. The demo prints which.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from skimage import data as skimage_data

from datasets import synthetic_test_pairs
from datasets.noise_maps import normalise_map, peaks, resize_map
from datasets.synthetic_test import IID_SIGMAS
from networks import default_weights
from utils.errors import UserError
from utils.image_io import list_images, read_image, read_image_uint8, write_image
from utils.inference import (InputImageError, Runner, Source, add_common_args, add_protocol_args, file_sources,
                             markdown_table, protocol_dirs, report_errors)
from utils.inference.pictures import noise_heatmap, side_by_side
from utils.metrics import calculate_psnr, calculate_ssim

TASK = "denoising-syn"
DEFAULT_CKPT = default_weights(TASK)
"""The shipped project-trained compact denoiser (configs/denoising_syn_compact.json)."""
SSIM_MIN_SIDE = 11
TAILS, QUICK_LOOK_TAILS = ("", "_noise_std"), ("_noisy", "_compare")
"""Output files per image: NAME<tail>.png (quick look adds the second group)."""


def noise_spec(text: str) -> str | float:
    """argparse type of --add_noise: 'niid' or a positive std on the 0-255 scale."""
    if text.lower() == "niid":
        return "niid"
    try:
        sigma = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a noise std in 0-255 units or 'niid', got {text!r}") from None
    if not 0 < sigma <= 255:
        raise argparse.ArgumentTypeError(f"noise std must be in (0, 255], got {sigma}")
    return sigma


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common demo flags plus the quick-look and protocol flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, DEFAULT_CKPT)
    parser.add_argument("--add_noise", type=noise_spec, default=None, metavar="SIGMA|niid",
                        help="quick look: add Gaussian noise (std in 0-255 units, or 'niid') to clean inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the quick-look noise (default 0)")
    parser.add_argument("--protocol", choices=("niid", "iid"), default=None,
                        help="run the paper's synthetic test protocol")
    add_protocol_args(parser, "test_data", ["CBSD68", "McMaster"])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 done, 1 nothing could be done or an error)."""
    return report_errors(_run, argv)


def _run(argv: Optional[Sequence[str]]) -> int:
    """Parse the flags, check inputs and outputs, load the model, then run the chosen mode."""
    args = build_parser().parse_args(argv)
    if args.protocol and (args.in_path or args.add_noise is not None):
        raise UserError("--protocol takes its images from --data_root/--datasets; drop -i and --add_noise")
    suffix = f"_{args.prefix}" if args.prefix else ""
    if args.protocol:
        dirs = protocol_dirs(args.data_root, args.datasets)
        runner = Runner(args.out_path, suffix)
        runner.load(args, TASK, DEFAULT_CKPT)
        return run_protocol(runner, args.protocol, dirs, args.ckpt_path or str(DEFAULT_CKPT))
    noise = "niid" if args.in_path is None and args.add_noise is None else args.add_noise
    sources = ([Source("chelsea", None, skimage_data.chelsea)] if args.in_path is None
               else file_sources(args.in_path, read_image if noise is None else read_image_uint8))
    runner = Runner(args.out_path, suffix)
    runner.check([s.stem for s in sources], TAILS + (QUICK_LOOK_TAILS if noise is not None else ()),
                 ("quicklook",) if noise is not None else (), [s.path for s in sources if s.path])
    runner.load(args, TASK, DEFAULT_CKPT)
    if args.in_path is None:
        label = "non-i.i.d. ('peaks' map, std 10-75)" if noise == "niid" else f"i.i.d. (std {noise:g})"
        print(f"no -i given: a quick look at scikit-image's 'chelsea' sample with {label} noise", file=sys.stderr)
    return runner.images(sources, partial(_process, runner, noise, np.random.default_rng(args.seed)),
                         tabulate=partial(_quick_look_table, runner))


def noise_std_map(noise: str | float, height: int, width: int) -> np.ndarray:
    """The quick-look noise std on the [0, 1] scale as an H x W x 1 float32 map: the protocol's
    case-1 'peaks' map (10/255 to 75/255) stretched to the image for 'niid', else constant."""
    if noise == "niid":
        return resize_map(normalise_map(peaks(256)), width, height)[:, :, None]
    return np.full((height, width, 1), noise / 255.0, dtype=np.float32)


def _process(runner: Runner, noise: str | float | None, rng: np.random.Generator, source: Source) -> Optional[dict]:
    """Restore one source (adding noise first in quick look) and write its files; returns its metrics
    row in quick look, else None."""
    im = clean = source.load()
    height, width = im.shape[:2]
    if noise is not None:
        if min(height, width) < SSIM_MIN_SIDE:
            raise InputImageError(f"image too small for the quick look's SSIM: {width} x {height} "
                                  f"(min {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE})")
        std = noise_std_map(noise, height, width)
        noise_draw = (rng.standard_normal(clean.shape) * std).astype(np.float32)
        im = np.multiply(clean, 1.0 / 255, dtype=np.float32) + noise_draw
    result = runner.restore(source, im)
    write_image(runner.file(source.stem), result.image)
    true_std = None if noise is None else std * 255.0
    noise_heatmap(runner.file(source.stem, "_noise_std"), result.noise_std_255, true_std)
    if noise is None:
        return None
    write_image(runner.file(source.stem, "_noisy"), im)
    side_by_side(runner.file(source.stem, "_compare"), [im, result.image, clean], ["noisy", "restored", "clean"])
    return {"image": source.stem, "noise": "niid" if noise == "niid" else f"sigma{noise:g}",
            "psnr_noisy": calculate_psnr(im, clean), "ssim_noisy": calculate_ssim(im, clean),
            "psnr": calculate_psnr(result.image, clean), "ssim": calculate_ssim(result.image, clean)}


def _quick_look_table(runner: Runner, rows: list[dict]) -> None:
    """Write quicklook.{csv,json,md} and print the markdown table."""
    runner.results("quicklook", rows, rows, markdown_table(
        ["image", "noise", "PSNR noisy", "PSNR", "SSIM noisy", "SSIM"],
        [[r["image"], r["noise"], f"{r['psnr_noisy']:.2f}", f"{r['psnr']:.2f}", f"{r['ssim_noisy']:.4f}",
          f"{r['ssim']:.4f}"] for r in rows]))


def run_protocol(runner: Runner, noise_type: str, dirs: dict[str, Path], ckpt: str) -> int:
    """Run the synthetic protocol and write per-image and mean PSNR/SSIM (RGB, uint8, border 0) of the
    restoration and of the noisy input (the baseline, clipped and quantised alike) as
    virnet_denoising_{type}.{csv,json,md}; prints the dataset x case table. Returns 0."""
    labels = [f"case{c}" for c in (1, 2, 3)] if noise_type == "niid" else [f"sigma{s}" for s in IID_SIGMAS]
    cases = (({"dataset": dataset, "case": labels[case - 1], "image": name}, gt, noisy, noisy)
             for dataset, case, name, gt, noisy in synthetic_test_pairs(noise_type, dirs))
    rows = runner.evaluate(cases, 3 * sum(len(list_images(d)) for d in dirs.values()), noise_type, "noisy")
    runner.protocol_results(f"virnet_denoising_{noise_type}", rows, "case", [f"{c} PSNR / SSIM" for c in labels],
                            [("VIRNet", "psnr", "ssim"), ("noisy input", "psnr_noisy", "ssim_noisy")],
                            {"protocol": noise_type, "checkpoint": ckpt, "datasets": list(dirs)},
                            f"{noise_type} protocol, {len(rows)} restorations; results in {runner.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
