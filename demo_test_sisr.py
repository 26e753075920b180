#!/usr/bin/env python
"""VIRNet blind super-resolution: super-resolve your images, look at a sample, or run the paper's
SR test protocol.

  restore   python demo_test_sisr.py -i IMAGE|FOLDER -o DIR --sf 4
            super-resolves real low-resolution images; writes NAME.png (the SR image) and
            NAME_kernel.png (the estimated blur kernel with its (var1, var2, rho)) per image and
            logs the estimated noise level (std, 0-255 scale; --snet_output says how to read
            the S-Net of a model trained with the reference's prior slip corrected).
  protocol  python demo_test_sisr.py --sf 4 --noise_level 2.55 [--data_root DIR --datasets Set14 CBSD68]
            the reference protocol: each image (modcrop to sf, gray as 3 channels) blurred by the 7
            test kernels, bicubic down-sampling, noise of std noise_level (0-255; the paper uses
            0.1, 2.55, 7.65) from default_rng(1234); PSNR / SSIM on Y with border sf^2, beside
            bicubic up-sampling of the LR input as the baseline. Writes
            virnet_sisr_x{sf}_nl{nl}.{csv,json,md} (per image x kernel, means) and prints the table.
  no -i     scikit-image's 'astronaut' (512 x 512) degraded by test kernel 6 and noise 2.55, then
            restored: writes the LR input, the SR result, a comparison panel and the true and
            estimated kernels side by side; prints PSNR / SSIM.

Weights: for x4, by default the project-trained compact model that ships in the repository
(model_zoo/virnet_sisr_x4_compact.pth); for x2 and x3, model_zoo/virnet_sisr_x{sf}.pth, the authors'
released weights (downloaded separately; --ckpt_path model_zoo/virnet_sisr_x4.pth for theirs at x4).
The demo prints which weights it uses.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from skimage import data as skimage_data
from tqdm import tqdm

from datasets.sisr import modcrop
from utils.degradation import SR_TEST_KERNELS, degrade_sr, sr_test_kernels
from utils.image_io import ImageReadError, list_images, read_image, read_image_uint8, write_image
from utils.inference import (DemoError, InputImageError, Restored, Restorer, add_common_args,
                             check_no_overwrite, image_file_notes, input_files, markdown_table, prepare_output_dir,
                             protocol_dirs, report_errors, restorer_from_args, write_csv, write_json, write_text)
from utils.metrics import calculate_psnr, calculate_ssim
from utils.resize import imresize
from utils.visualize import side_by_side
from utils.visualize_sr import KernelPanel, kernel_figure, kernel_from_kinfo, kinfo_caption

TASK = "sisr"
SCALES = (2, 3, 4)
K_SIZE = 21
PROTOCOL_SEED = 1234
EMBEDDED_KERNEL = 6
"""Test kernel (1-based) of the embedded sample: anisotropic, (0.8 sf, 0.4 sf), theta pi / 4."""
EMBEDDED_NOISE = 2.55
SNET_OUTPUTS = ("std", "variance")
MODEL_ZOO = Path(__file__).resolve().parent / "model_zoo"
PROTOCOL_METRICS = ("psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic")
"""Per-image protocol metrics: the SR result's, and MATLAB-bicubic up-sampling's as the classical baseline."""


def default_ckpt(sf: int | str) -> Path:
    """The default weights for scale ``sf``: the shipped compact model for x4
    (model_zoo/virnet_sisr_x4_compact.pth), else the released model_zoo/virnet_sisr_x{sf}.pth."""
    return MODEL_ZOO / (f"virnet_sisr_x{sf}_compact.pth" if int(sf) == 4 else f"virnet_sisr_x{sf}.pth")


def noise_tag(level: float) -> str:
    """The reference's noise label in file names: '0' for 0, else the value without its dot
    (0.1 -> '01', 2.55 -> '255', 7.65 -> '765')."""
    return "0" if level == 0 else str(level).replace(".", "")


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common demo flags plus --sf and the protocol flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "model_zoo/virnet_sisr_x4_compact.pth for x4, model_zoo/virnet_sisr_x{sf}.pth "
                            "(released) for x2 and x3")
    parser.add_argument("--sf", type=int, default=4, help="scale factor: 2, 3 or 4 (default 4)")
    parser.add_argument("--snet_output", choices=SNET_OUTPUTS, default="std",
                        help="what the model's S-Net estimates: 'std' for the released weights and models "
                             "trained with prior_uses_variance false (default), 'variance' for models "
                             "trained with prior_uses_variance true; only the logged noise level depends on it")
    parser.add_argument("--noise_level", "--nlevel", type=float, default=None, metavar="L",
                        help="run the protocol with noise std L (0-255 scale; the paper: 0.1, 2.55, 7.65)")
    parser.add_argument("--data_root", default="../shared/testsets",
                        help="folder holding the test sets (protocol; default ../shared/testsets, looked up "
                             "in the current folder, then beside the repository)")
    parser.add_argument("--datasets", nargs="+", default=["Set14", "CBSD68"],
                        help="test-set folders under --data_root (protocol; default Set14 CBSD68)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 done, 1 nothing could be done or an error)."""
    return report_errors(_run, argv)


def _run(argv: Optional[Sequence[str]]) -> int:
    """Parse and check the flags, then run the chosen mode."""
    args = build_parser().parse_args(argv)
    if args.sf not in SCALES:
        raise DemoError(f"--sf must be 2, 3 or 4, got {args.sf}")
    suffix = f"_{args.prefix}" if args.prefix else ""
    ckpt = args.ckpt_path or str(default_ckpt(args.sf))
    if args.noise_level is not None:
        if args.in_path:
            raise DemoError("--noise_level runs the protocol on --data_root/--datasets; drop -i")
        if not 0 <= args.noise_level <= 255:
            raise DemoError(f"--noise_level must be in [0, 255], got {args.noise_level:g}")
        dirs = protocol_dirs(args.data_root, args.datasets)
        out_dir = prepare_output_dir(args.out_path)
        restorer = restorer_from_args(args, TASK, default_ckpt(args.sf), sf=args.sf)
        return run_protocol(restorer, args.sf, args.noise_level, dirs, out_dir, suffix, ckpt)
    out_dir = prepare_output_dir(args.out_path)
    if args.in_path is None:
        stem = f"astronaut_x{args.sf}{suffix}"
        check_no_overwrite([out_dir / f"{stem}{tail}.png" for tail in ("", "_lr", "_compare", "_kernel")], [])
        restorer = restorer_from_args(args, TASK, default_ckpt(args.sf), sf=args.sf)
        print(f"no -i given: scikit-image's 'astronaut' blurred by test kernel {EMBEDDED_KERNEL}, down-sampled "
              f"x{args.sf}, noise std {EMBEDDED_NOISE}, then restored", file=sys.stderr)
        return run_embedded(restorer, args.sf, out_dir, stem, args.snet_output)
    sources = input_files(Path(args.in_path))
    check_no_overwrite([out_dir / f"{p.stem}{suffix}{tail}.png" for p in sources for tail in ("", "_kernel")],
                       sources)
    restorer = restorer_from_args(args, TASK, default_ckpt(args.sf), sf=args.sf)
    return run_images(restorer, args.sf, sources, out_dir, suffix, args.snet_output)


# --------------------------------------------------------------------------- shared pieces

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


def nearest_up(im: np.ndarray, sf: int) -> np.ndarray:
    """H x W x C image enlarged sf times by pixel replication (to show an LR input beside SR)."""
    return np.repeat(np.repeat(im, sf, axis=0), sf, axis=1)


# --------------------------------------------------------------------------- restore

def run_images(restorer: Restorer, sf: int, files: Sequence[Path], out_dir: Path, suffix: str,
               snet_output: str) -> int:
    """Super-resolve every file, write NAME.png and NAME_kernel.png and log the estimates; unusable
    images are skipped with one line each. Returns 0 when at least one image was done, else 1."""
    skipped = 0
    for path in tqdm(files, desc="images", unit="img", disable=None):
        try:
            restore_file(restorer, sf, path, out_dir, suffix, snet_output)
        except (ImageReadError, InputImageError) as err:
            skipped += 1
            tqdm.write(f"skipped {path.name}: {err}", file=sys.stderr)
    done = len(files) - skipped
    print(f"super-resolved {done} of {len(files)} image(s) x{sf}" + (f", skipped {skipped}" if skipped else "")
          + f"; results in {out_dir}")
    return 0 if done else 1


def restore_file(restorer: Restorer, sf: int, path: Path, out_dir: Path, suffix: str, snet_output: str) -> None:
    """Super-resolve one LR image file and write its SR image and kernel picture."""
    im = read_image(path)
    check_size(im)
    notes = image_file_notes(path)
    height, width = im.shape[:2]
    if restorer.will_tile(height, width):
        notes.append(f"{width} x {height}, restored in {restorer.tile} px tiles (overlap {restorer.overlap})")
    if notes:
        tqdm.write(f"note: {path.name}: {'; '.join(notes)}", file=sys.stderr)
    result = restorer(im)
    write_image(out_dir / f"{path.stem}{suffix}.png", result.image)
    kernel = kernel_from_kinfo(result.kinfo, K_SIZE, sf)
    kernel_figure(out_dir / f"{path.stem}{suffix}_kernel.png",
                  [KernelPanel(f"{path.stem}: estimated kernel", kernel, result.kinfo)])
    tqdm.write(f"{path.name}: {estimates_line(result, snet_output)}")


# --------------------------------------------------------------------------- embedded sample

def run_embedded(restorer: Restorer, sf: int, out_dir: Path, stem: str, snet_output: str) -> int:
    """Degrade scikit-image's 'astronaut' with test kernel EMBEDDED_KERNEL and noise EMBEDDED_NOISE,
    restore it and write the LR input, the SR image, LR | SR | HR, and the true and estimated
    kernels side by side; prints PSNR / SSIM on Y (border sf^2). Returns 0."""
    kernels, kinfos = sr_test_kernels(sf, K_SIZE)
    index = EMBEDDED_KERNEL - 1
    im_gt = modcrop(skimage_data.astronaut(), sf)
    im_lr = degrade_sr(im_gt.astype(np.float32) / 255, kernels[index], sf, EMBEDDED_NOISE, seed=PROTOCOL_SEED)
    result = restorer(im_lr)
    write_image(out_dir / f"{stem}_lr.png", im_lr)
    write_image(out_dir / f"{stem}.png", result.image)
    side_by_side(out_dir / f"{stem}_compare.png", [nearest_up(im_lr, sf), result.image, im_gt],
                 [f"LR x{sf} (nearest)", "VIRNet", "HR"])
    kernel_figure(out_dir / f"{stem}_kernel.png",
                  [KernelPanel(f"true kernel (test kernel {EMBEDDED_KERNEL})", kernels[index], kinfos[index]),
                   KernelPanel("estimated kernel", kernel_from_kinfo(result.kinfo, K_SIZE, sf), result.kinfo)])
    border = sf ** 2
    psnr = calculate_psnr(result.image, im_gt, border, ycbcr=True)
    ssim = calculate_ssim(result.image, im_gt, border, ycbcr=True)
    print(f"astronaut x{sf}: PSNR {psnr:.2f} dB, SSIM {ssim:.4f} (Y, border {border}); true noise std "
          f"{EMBEDDED_NOISE} and kernel {kinfo_caption(kinfos[index])}; {estimates_line(result, snet_output)}")
    print(f"results in {out_dir}")
    return 0


# --------------------------------------------------------------------------- protocol

class Case(NamedTuple):
    """One protocol input: the HR image (uint8, modcropped) and its degraded LR image."""
    gt: np.ndarray
    lr: np.ndarray


def protocol_case(path: Path, kernel: np.ndarray, sf: int, noise_level: float) -> Case:
    """The reference's degradation of one test image (``degrade_sr`` with seed 1234)."""
    gt = modcrop(read_image_uint8(path), sf)
    return Case(gt, degrade_sr(gt.astype(np.float32) / 255, kernel, sf, noise_level, seed=PROTOCOL_SEED))


def run_protocol(restorer: Restorer, sf: int, noise_level: float, dirs: dict[str, Path], out_dir: Path,
                 suffix: str, ckpt: str) -> int:
    """Run the SR protocol (datasets, then kernels 1-7, then images, as the reference) and write
    per-image and mean PSNR / SSIM (Y, uint8, border sf^2) of the SR result and of MATLAB-bicubic
    up-sampling of the LR input (the baseline) as virnet_sisr_x{sf}_nl{nl}.{csv,json,md};
    prints the dataset x kernel table. Returns 0."""
    kernels, _ = sr_test_kernels(sf, K_SIZE)
    labels = [str(k + 1) for k in range(len(kernels))]
    files = {name: list_images(folder) for name, folder in dirs.items()}
    total = len(kernels) * sum(len(f) for f in files.values())
    rows = []
    with tqdm(total=total, desc=f"x{sf} nl {noise_level:g}", unit="img", disable=None) as bar:
        for dataset, paths in files.items():
            for label, kernel in zip(labels, kernels):
                for path in paths:
                    case = protocol_case(path, kernel, sf, noise_level)
                    check_size(case.lr, f"{dataset}/{path.name}")
                    restored = restorer(case.lr).image
                    bicubic = np.clip(imresize(case.lr, sf), 0, 1)
                    rows.append({"dataset": dataset, "kernel": label, "image": path.stem,
                                 "psnr_y": calculate_psnr(restored, case.gt, sf ** 2, ycbcr=True),
                                 "ssim_y": calculate_ssim(restored, case.gt, sf ** 2, ycbcr=True),
                                 "psnr_y_bicubic": calculate_psnr(bicubic, case.gt, sf ** 2, ycbcr=True),
                                 "ssim_y_bicubic": calculate_ssim(bicubic, case.gt, sf ** 2, ycbcr=True)})
                    bar.update(1)
    means = protocol_means(rows, list(files), labels)
    stem = f"virnet_sisr_x{sf}_nl{noise_tag(noise_level)}{suffix}"
    mean_rows = [{"dataset": d, "kernel": k, "image": "mean", **means[d][k]} for d in files for k in means[d]]
    write_csv(out_dir / f"{stem}.csv", rows + mean_rows)
    write_json(out_dir / f"{stem}.json", {
        "protocol": "sisr", "sf": sf, "noise_level": noise_level, "seed": PROTOCOL_SEED, "checkpoint": ckpt,
        "kernels": [{"kernel": label, "a1": a1, "a2": a2, "theta_over_pi": t}
                    for label, (a1, a2, t) in zip(labels, SR_TEST_KERNELS)],
        "datasets": list(files), "mean": means, "images": rows})
    table = markdown_table(["dataset", "method"] + [f"kernel {k}" for k in labels] + ["mean"],
                           [[d, method] + [f"{means[d][k]['psnr_y' + tail]:.2f} / {means[d][k]['ssim_y' + tail]:.4f}"
                                           for k in labels + ["mean"]]
                            for d in files for method, tail in (("VIRNet", ""), ("bicubic", "_bicubic"))])
    write_text(out_dir / f"{stem}.md", table)
    print(f"SR protocol x{sf}, noise {noise_level:g}: {len(rows)} restorations, PSNR / SSIM on Y "
          f"(border {sf ** 2}); results in {out_dir}")
    print(table, end="")
    return 0


def protocol_means(rows: Sequence[dict], datasets: Sequence[str], labels: Sequence[str]) -> dict:
    """dataset -> kernel label -> {metric: value} (PROTOCOL_METRICS): the mean over the images of each kernel, and
    under 'mean' the mean of the kernel means (the reference's dataset score)."""
    means: dict = {}
    for d in datasets:
        per_kernel = {k: {m: float(np.mean([r[m] for r in rows if r["dataset"] == d and r["kernel"] == k]))
                          for m in PROTOCOL_METRICS} for k in labels}
        per_kernel["mean"] = {m: float(np.mean([v[m] for v in per_kernel.values()])) for m in PROTOCOL_METRICS}
        means[d] = per_kernel
    return means


if __name__ == "__main__":
    sys.exit(main())
