#!/usr/bin/env python
"""VIRNet blind super-resolution: super-resolve your images, look at a sample, or run the paper's
SR test protocol.

  restore   python demo_test_sisr.py -i IMAGE|FOLDER -o DIR --sf 4
            writes NAME.png (the SR image) and NAME_kernel.png (the estimated blur kernel with its
            (var1, var2, rho)) per image and logs the estimated noise level (std, 0-255 scale).
  protocol  python demo_test_sisr.py --sf 4 --protocol [--noise_level 2.55] [--data_root DIR --datasets Set14 CBSD68]
            the reference protocol (7 test kernels, noise std --noise_level on the 0-255 scale, default
            2.55; the paper: 0.1, 2.55, 7.65; --noise_level alone also runs it): PSNR / SSIM on Y with
            border sf^2, beside bicubic up-sampling of the LR input, LPIPS (AlexNet) when the lpips
            package and its weights are here, the model's parameters and FLOPs; writes virnet_sisr_x{sf}_nl{nl}.{csv,json,md} and prints the table (--save_images:
            the SR images too; with --flip the results are named virnet_sisr_x{sf}_nl{nl}_flip).
  no -i     scikit-image's 'astronaut' degraded by test kernel 6 and noise 2.55, then restored:
            writes the LR input, the SR result, a comparison panel and the true and estimated kernels.
Self-ensemble: --flip super-resolves the 8 flips / rotations of each image and averages them, the
kernel estimates turned back (8 times slower, every mode; the reference's SR protocol runs without it).
The demo prints the weights it uses (see --ckpt_path).
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from skimage import data as skimage_data
from tqdm import tqdm

from datasets.sr_test import (KERNELS, K_SIZE, SEED, degrade_test_image, noise_tag, sr_test_pairs,
                              with_kernel_errors)
from networks import default_weights, task_spec
from utils.degradation import sr_test_kernels
from utils.errors import UserError
from utils.image_io import list_images, write_image
from utils.inference import (InputImageError, Restored, Runner, Source, add_common_args, add_protocol_args,
                             file_sources, protocol_dirs, report_errors)
from utils.inference.pictures import KernelPanel, kernel_figure, kernel_from_kinfo, kinfo_caption, side_by_side
from utils.metrics import calculate_psnr, calculate_ssim
from utils.resize import imresize

TASK = "sisr"
SCALES = task_spec(TASK).scales
EMBEDDED_KERNEL = 6
"""Test kernel (1-based) of the embedded sample: anisotropic, (0.8 sf, 0.4 sf), theta pi / 4."""
EMBEDDED_NOISE = 2.55
PROTOCOL_NOISE = 2.55
"""The protocol's noise std (0-255 scale) when --protocol is given without --noise_level."""


default_ckpt = partial(default_weights, TASK)
"""default_ckpt(sf): the registry's default weights (x4: the shipped compact model; x2, x3: released)."""


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common demo flags plus --sf and the protocol flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, f"x4 model_zoo/{default_ckpt(4).name}, else the released virnet_sisr_x{{sf}}.pth")
    parser.add_argument("--sf", type=int, default=4, help="scale factor: 2, 3 or 4 (default 4)")
    parser.add_argument("--snet_output", choices=("std", "variance"), default="std",
                        help="what the S-Net estimates: 'std' (the released weights, prior_uses_variance false; "
                             "default) or 'variance' (prior_uses_variance true); read by the logged noise level")
    parser.add_argument("--protocol", action="store_true",
                        help=f"run the paper's SR test protocol (noise std --noise_level, default {PROTOCOL_NOISE:g})")
    parser.add_argument("--noise_level", "--nlevel", type=float, default=None, metavar="L",
                        help="the protocol's noise std L (0-255 scale; the paper: 0.1, 2.55, 7.65); given alone, "
                             "it runs the protocol")
    parser.add_argument("--flip", action="store_true",
                        help="self-ensemble over the 8 flips / rotations, kernel estimates turned back (8 times slower)")
    add_protocol_args(parser, "../shared/testsets", ["Set14", "CBSD68"])
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 done, 1 nothing could be done or an error)."""
    return report_errors(_run, argv)


def _run(argv: Optional[Sequence[str]]) -> int:
    """Parse and check the flags, inputs and outputs, load the model, then run the chosen mode."""
    args = build_parser().parse_args(argv)
    if args.sf not in SCALES:
        raise UserError(f"--sf must be 2, 3 or 4, got {args.sf}")
    protocol, ckpt = args.protocol or args.noise_level is not None, default_ckpt(args.sf)
    if protocol:
        flag = "--protocol" if args.protocol else "--noise_level"
        args.noise_level = PROTOCOL_NOISE if args.noise_level is None else args.noise_level
        if args.in_path:
            raise UserError(f"{flag} runs the protocol on --data_root/--datasets; drop -i")
        if not 0 <= args.noise_level <= 255:
            raise UserError(f"--noise_level must be in [0, 255], got {args.noise_level:g}")
        dirs = protocol_dirs(args.data_root, args.datasets, args.default_datasets)
    runner = Runner(args.out_path, f"_{args.prefix}" if args.prefix else "", args.overwrite)
    sources = file_sources(args.in_path) if args.in_path else []
    if not protocol:
        tails = ("", "_kernel") if sources else ("", "_lr", "_compare", "_kernel")
        runner.check([s.stem for s in sources] or [f"astronaut_x{args.sf}"], tails, inputs=[s.path for s in sources])
    runner.load(args, TASK, ckpt, sf=args.sf, flip=args.flip, protocol=protocol)
    if protocol:
        return run_protocol(runner, args.sf, args.noise_level, dirs, args.ckpt_path or str(ckpt))
    if sources:
        return runner.images(sources, partial(restore_file, runner, args.sf, args.snet_output),
                             verb="super-resolved", detail=f" x{args.sf}")
    print(f"no -i given: scikit-image's 'astronaut' blurred by test kernel {EMBEDDED_KERNEL}, down-sampled "
          f"x{args.sf}, noise std {EMBEDDED_NOISE}, then restored", file=sys.stderr)
    return run_embedded(runner, args.sf, args.snet_output)


def check_size(im: np.ndarray, where: str = "") -> None:
    """Refuse (InputImageError) an LR image whose side is shorter than the blur kernel (K_SIZE);
    ``where`` (e.g. the test set and file) starts the message when given."""
    height, width = im.shape[:2]
    if min(height, width) < K_SIZE:
        raise InputImageError(f"{where + ': ' if where else ''}image too small: {width} x {height} is "
                              f"smaller than the {K_SIZE} x {K_SIZE} blur kernel")


def noise_std_255(result: Restored, snet_output: str) -> float:
    """The estimated noise std on the 0-255 scale. The S-Net of a model trained as the reference
    (the released weights; ``prior_uses_variance: false``) learnt the noise std itself ('std');
    one trained with ``prior_uses_variance: true`` learnt the variance ('variance')."""
    estimate = float(np.mean(result.noise_var))
    return 255.0 * (estimate if snet_output == "std" else np.sqrt(estimate))


def estimates_line(result: Restored, snet_output: str) -> str:
    """'estimated noise std S (0-255), kernel (var1, var2, rho) = (...)' of one restoration."""
    return (f"estimated noise std {noise_std_255(result, snet_output):.2f} (0-255), "
            f"kernel {kinfo_caption(result.kinfo)}")


def restore_file(runner: Runner, sf: int, snet_output: str, source: Source) -> None:
    """Super-resolve one LR image file, write its SR image and kernel picture and log the estimates."""
    result = runner.restore_file(source, check_size)  # NAME.png: stored as the input was (alpha resized)
    kernel = kernel_from_kinfo(result.kinfo, K_SIZE, sf)
    kernel_figure(runner.file(source.stem, "_kernel"),
                  [KernelPanel(f"{source.stem}: estimated kernel", kernel, result.kinfo)])
    tqdm.write(f"{source.name}: {estimates_line(result, snet_output)}")


def run_embedded(runner: Runner, sf: int, snet_output: str) -> int:
    """Degrade scikit-image's 'astronaut' with test kernel EMBEDDED_KERNEL and noise EMBEDDED_NOISE,
    restore it and write the LR input, the SR image, LR | SR | HR, and the true and estimated
    kernels side by side; prints PSNR / SSIM on Y (border sf^2). Returns 0."""
    kernels, kinfos = sr_test_kernels(sf, K_SIZE)
    index, stem = EMBEDDED_KERNEL - 1, f"astronaut_x{sf}"
    im_gt, im_lr = degrade_test_image(skimage_data.astronaut(), kernels[index], sf, EMBEDDED_NOISE)
    result = runner.restorer(im_lr, stem)
    write_image(runner.file(stem, "_lr"), im_lr)
    write_image(runner.file(stem), result.image)
    side_by_side(runner.file(stem, "_compare"), [im_lr.repeat(sf, axis=0).repeat(sf, axis=1), result.image, im_gt],
                 [f"LR x{sf} (nearest)", "VIRNet", "HR"])
    kernel_figure(runner.file(stem, "_kernel"),
                  [KernelPanel(f"true kernel (test kernel {EMBEDDED_KERNEL})", kernels[index], kinfos[index]),
                   KernelPanel("estimated kernel", kernel_from_kinfo(result.kinfo, K_SIZE, sf), result.kinfo)])
    psnr, ssim = (metric(result.image, im_gt, sf ** 2, ycbcr=True) for metric in (calculate_psnr, calculate_ssim))
    print(f"astronaut x{sf}: PSNR {psnr:.2f} dB, SSIM {ssim:.4f} (Y, border {sf ** 2}); true noise std "
          f"{EMBEDDED_NOISE} and kernel {kinfo_caption(kinfos[index])}; {estimates_line(result, snet_output)}")
    print(f"results in {runner.out_dir}")
    return 0


def run_protocol(runner: Runner, sf: int, noise_level: float, dirs: dict[str, Path], ckpt: str) -> int:
    """Run the SR protocol (``datasets.sr_test``) and write per-image and mean PSNR / SSIM (Y, uint8,
    border sf^2) of the SR result and of MATLAB-bicubic up-sampling of the LR input (the baseline), and
    the K-Net's kernel errors (``with_kernel_errors``), as virnet_sisr_x{sf}_nl{nl}.{csv,json,md}; the
    mean of a dataset is the mean of its kernel means (the reference's score); _flip is appended when the
    runner's restorer self-ensembles. Prints the table. Returns 0."""
    def cases():
        for dataset, number, path, gt, lr in sr_test_pairs(dirs, sf, noise_level):
            check_size(lr, f"{dataset}/{path.name}")
            labels = {"dataset": dataset, "kernel": str(number), "image": path.stem}
            yield labels, gt, lr, np.clip(imresize(lr, sf), 0, 1)

    total = len(KERNELS) * sum(len(list_images(d)) for d in dirs.values())
    flip = runner.restorer.flip
    results = f"virnet_sisr_x{sf}_nl{noise_tag(noise_level)}" + ("_flip" if flip else "")
    runner.check([], (), (results,))
    rows = with_kernel_errors(runner.evaluate(cases(), total, f"x{sf} nl {noise_level:g}", "bicubic", sf ** 2,
                                              ycbcr=True, name=results, perceptual=True), sf)
    record = {"protocol": "sisr", "sf": sf, "noise_level": noise_level, "seed": SEED, "checkpoint": ckpt,
              "kernels": KERNELS, "datasets": list(dirs), "flip": flip}
    runner.protocol_results(results, rows, "kernel", [f"kernel {k['kernel']}" for k in KERNELS] + ["mean"],
                            [("VIRNet", "psnr_y", "ssim_y"), ("bicubic", "psnr_y_bicubic", "ssim_y_bicubic"),
                             ("K-Net error var1 / var2 / rho", "var1_error", "var2_error", "rho_error")], record,
                            f"SR protocol x{sf}, noise {noise_level:g}{', self-ensemble' if flip else ''}: {len(rows)} restorations, PSNR / SSIM on Y "
                            f"(border {sf ** 2}); results in {runner.out_dir}", mean_column=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
