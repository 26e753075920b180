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
  protocol    python demo_test_syn.py --protocol niid [--data_root DIR --datasets CBSD68 McMaster]
              the reference protocol (datasets.synthetic_test_pairs); writes
              virnet_denoising_{niid|iid}.{csv,json,md} (per image and means, beside the noisy input's
              scores as the baseline; the model's parameters and FLOPs) and prints the table;
              --save_images also writes the restorations; with --flip the results are named
              virnet_denoising_{niid|iid}_flip.
  no -i       a quick look at scikit-image's 'chelsea' sample with non-i.i.d. noise.

Self-ensemble: --flip restores the 8 flips / rotations of each image and averages them (8 times
slower, in every mode; the reference's synthetic protocol runs without it).
Strength: --strength K scales the noise std map the restoration assumes (K < 1 keeps more
texture, K > 1 smooths more; docs/strength.md); --noise_map VALUE|FILE replaces the estimate (0-255 units).
Restored files keep their input's orientation, bit depth (--bit_depth), gray / alpha, ICC and EXIF.

Weights: the shipped compact model (model_zoo/virnet_denoising_syn_compact.safetensors) unless --ckpt_path
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
from utils.image_io import list_images, read_image_uint8
from utils.inference import (QUICK_LOOK_TAILS, Runner, Source, add_common_args, add_denoiser_args, add_protocol_args,
                             file_sources, protocol_dirs, report_errors)

TASK = "denoising-syn"
DEFAULT_CKPT = default_weights(TASK)
"""The shipped project-trained compact denoiser (configs/denoising_syn_compact.json)."""
TAILS = ("", "_noise_std")
"""Output files per image when restoring: NAME<tail>.png (a quick look writes QUICK_LOOK_TAILS)."""


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
    add_denoiser_args(parser)
    parser.add_argument("--add_noise", type=noise_spec, default=None, metavar="SIGMA|niid",
                        help="quick look: add Gaussian noise (std in 0-255 units, or 'niid') to clean inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the quick-look noise (default 0)")
    parser.add_argument("--flip", action="store_true",
                        help="self-ensemble over the 8 flips / rotations (8 times slower)")
    parser.add_argument("--protocol", choices=("niid", "iid"), default=None,
                        help="run the paper's synthetic test protocol")
    add_protocol_args(parser, "../shared/testsets", ["CBSD68", "McMaster"])
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
        dirs = protocol_dirs(args.data_root, args.datasets, args.default_datasets)
        runner = Runner(args.out_path, suffix, args.overwrite)
        runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip, protocol=True)
        return run_protocol(runner, args.protocol, dirs, args.ckpt_path or str(DEFAULT_CKPT))
    noise = "niid" if args.in_path is None and args.add_noise is None else args.add_noise
    # a quick look loads clean uint8 images; a restore reads its file itself (Runner.restore_file)
    sources = ([Source("chelsea", None, skimage_data.chelsea)] if args.in_path is None
               else file_sources(args.in_path, read_image_uint8))
    runner = Runner(args.out_path, suffix, args.overwrite)
    runner.check([s.stem for s in sources], TAILS if noise is None else QUICK_LOOK_TAILS,
                 ("quicklook",) if noise is not None else (), [s.path for s in sources if s.path])
    runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip)
    if args.in_path is None:
        label = "non-i.i.d. ('peaks' map, std 10-75)" if noise == "niid" else f"i.i.d. (std {noise:g})"
        print(f"no -i given: a quick look at scikit-image's 'chelsea' sample with {label} noise", file=sys.stderr)
    return runner.images(sources, partial(_process, runner, noise, np.random.default_rng(args.seed)),
                         tabulate=runner.quick_look_table)


def noise_std_map(noise: str | float, height: int, width: int) -> np.ndarray:
    """The quick-look noise std on the [0, 1] scale as an H x W x 1 float32 map: the protocol's
    case-1 'peaks' map (10/255 to 75/255) stretched to the image for 'niid', else constant."""
    if noise == "niid":
        return resize_map(normalise_map(peaks(256)), width, height)[:, :, None]
    return np.full((height, width, 1), noise / 255.0, dtype=np.float32)


def _process(runner: Runner, noise: str | float | None, rng: np.random.Generator, source: Source) -> Optional[dict]:
    """Restore one source and write its files, or, in quick look, add noise first
    (``Runner.quick_look``); returns its metrics row in quick look, else None."""
    if noise is None:
        runner.noise_picture(source.stem, runner.restore_file(source))
        return None

    def add_noise(clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        std = noise_std_map(noise, *clean.shape[:2])
        noise_draw = (rng.standard_normal(clean.shape) * std).astype(np.float32)
        return np.multiply(clean, 1.0 / 255, dtype=np.float32) + noise_draw, std * 255.0

    label = "niid" if noise == "niid" else f"sigma{noise:g}"
    return runner.quick_look(source, source.load(), label, add_noise)


def run_protocol(runner: Runner, noise_type: str, dirs: dict[str, Path], ckpt: str) -> int:
    """Run the synthetic protocol and write per-image and mean PSNR/SSIM (RGB, uint8, border 0) of the
    restoration and of the noisy input (the baseline, clipped and quantised alike) as
    virnet_denoising_{type}[_flip].{csv,json,md} (_flip: the runner's restorer self-ensembles); prints
    the dataset x case table. Returns 0."""
    labels = [f"case{c}" for c in (1, 2, 3)] if noise_type == "niid" else [f"sigma{s}" for s in IID_SIGMAS]
    cases = (({"dataset": dataset, "case": labels[case - 1], "image": name}, gt, noisy, noisy)
             for dataset, case, name, gt, noisy in synthetic_test_pairs(noise_type, dirs))
    flip = runner.restorer.flip
    results = f"virnet_denoising_{noise_type}" + ("_flip" if flip else "")
    total = 3 * sum(len(list_images(d)) for d in dirs.values())
    runner.check([], (), (results,))
    rows = runner.evaluate(cases, total, noise_type, "noisy", name=results)
    runner.protocol_results(results, rows, "case", [f"{c} PSNR / SSIM" for c in labels],
                            [("VIRNet", "psnr", "ssim"), ("noisy input", "psnr_noisy", "ssim_noisy")],
                            {"protocol": noise_type, "checkpoint": ckpt, "datasets": list(dirs), "flip": flip},
                            f"{noise_type} protocol{', self-ensemble' if flip else ''}, {len(rows)} restorations; "
                            f"results in {runner.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
