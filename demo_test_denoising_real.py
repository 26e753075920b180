#!/usr/bin/env python
"""VIRNet real-world denoising: restore your photos, or evaluate on SIDD and DND as the paper does.

  restore     python demo_test_denoising_real.py -i IMAGE|FOLDER -o DIR
              writes NAME.png and NAME_noise_std.png (heat map of the estimated noise std, 0-255, the
              mean of the R, G, B maps) per image, and noise_levels.{csv,json,md} (mean std per channel).
  SIDD val    python demo_test_denoising_real.py --sidd_val DIR -o DIR [--flip] [--save_mat]
              PSNR / SSIM over the validation blocks of DIR (ValidationNoisyBlocksSrgb.mat,
              ValidationGtBlocksSrgb.mat; MATLAB v5 or v7.3) as the paper reports them (RGB, border 0,
              uint8 of the clipped output, mean over all blocks): sidd_val_{flip|noflip}.{csv,json,md};
              --save_mat adds sidd_val_{flip|noflip}.mat (denoised_res, megatime).
  SIDD test   python demo_test_denoising_real.py --sidd_test DIR -o DIR [--flip]
              denoises BenchmarkNoisyBlocksSrgb.mat into sidd_test_{flip|noflip}.mat (as the reference)
              and SubmitSrgb.mat (the SIDD benchmark kit's layout) for the SIDD server.
  DND         python demo_test_denoising_real.py --dnd DIR -o DIR [--flip]
              every box of info.mat in every image of DIR/images_srgb into dnd_{flip|noflip}/
              {i:04d}_{k:02d}.mat, bundled into dnd_{flip|noflip}/bundled/ for the DND server.

--flip: the reference's evaluation self-ensemble (8 flips / rotations; 8 times slower). Timings
(seconds per megapixel) are wall-clock model calls including host-device copies.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from datasets.real import (SIDDBlocks, bundle_dnd_submission, dnd_crops, load_dnd_info, save_dnd_crop, save_mat,
                           sidd_block_paths, sidd_submission)
from networks import default_weights
from utils.devices import device_name
from utils.errors import UserError, user_errors
from utils.image_io import to_uint8, write_image
from utils.inference import (Runner, Source, add_common_args, check_no_overwrite, file_sources, markdown_table,
                             progress, report_errors, write_json)
from utils.inference.pictures import noise_heatmap
from utils.metrics import calculate_psnr, calculate_ssim

TASK = "denoising-real"
DEFAULT_CKPT = default_weights(TASK)
CHANNELS = ("r", "g", "b")
SSIM_MIN_SIDE = 11
DATA_ERRORS = (FileNotFoundError, ValueError)  # the SIDD / DND readers' errors, one line naming the file


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common demo flags plus the benchmark modes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, DEFAULT_CKPT)
    for flag, what in (("--sidd_val", "PSNR / SSIM on the SIDD validation blocks in DIR"),
                       ("--sidd_test", "denoise the SIDD benchmark blocks in DIR for the SIDD server"),
                       ("--dnd", "run the DND sRGB protocol on DIR (info.mat, images_srgb/)")):
        parser.add_argument(flag, metavar="DIR", default=None, help=what)
    parser.add_argument("--flip", action="store_true",
                        help="self-ensemble over the 8 flips / rotations (the reference's evaluation default)")
    parser.add_argument("--save_mat", action="store_true",
                        help="--sidd_val: also write the denoised blocks as sidd_val_{flip|noflip}.mat")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 done, 1 nothing could be done or an error)."""
    return report_errors(_run, argv)


def _run(argv: Optional[Sequence[str]]) -> int:
    """Parse the flags, then run the chosen mode (inputs and outputs checked before the model loads)."""
    args = build_parser().parse_args(argv)
    modes = {"-i": args.in_path, "--sidd_val": args.sidd_val, "--sidd_test": args.sidd_test, "--dnd": args.dnd}
    chosen = [flag for flag, value in modes.items() if value is not None]
    if len(chosen) != 1:
        given = f" (got {' and '.join(chosen)})" if chosen else ""
        raise UserError(f"give exactly one of -i IMAGE|FOLDER, --sidd_val DIR, --sidd_test DIR, --dnd DIR{given}")
    if args.save_mat and args.sidd_val is None:
        raise UserError("--save_mat goes with --sidd_val (--sidd_test always writes its .mat files)")
    suffix, flip = f"_{args.prefix}" if args.prefix else "", "flip" if args.flip else "noflip"
    if args.in_path is not None:
        sources = file_sources(args.in_path)
        runner = Runner(args.out_path, suffix)
        runner.check([s.stem for s in sources], ("", "_noise_std"), ("noise_levels",), [s.path for s in sources])
        runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip)
        return runner.images(sources, partial(_restore, runner), tabulate=partial(_noise_table, runner))
    if args.dnd is not None:
        with user_errors(*DATA_ERRORS):
            boxes = load_dnd_info(Path(args.dnd))
        if not boxes or len({len(b) for b in boxes}) != 1:
            raise UserError(f"{Path(args.dnd) / 'info.mat'}: expected the same number of boxes for every image, "
                            f"got {[len(b) for b in boxes]}")
        runner = Runner(args.out_path, suffix)
        runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip)
        return run_dnd(runner, Path(args.dnd), boxes, f"dnd_{flip}{suffix}", args.ckpt_path or str(DEFAULT_CKPT))
    return _sidd(args, "val" if args.sidd_val is not None else "test", flip, suffix)


def _restore(runner: Runner, source: Source) -> dict:
    """Restore one photo, write it and its noise heat map; returns its row of noise levels."""
    result = runner.restore(source, source.load())
    std_255 = result.noise_std_255
    write_image(runner.file(source.stem), result.image)
    noise_heatmap(runner.file(source.stem, "_noise_std"), std_255, title="estimated noise std, average of R, G, B")
    levels = np.broadcast_to(std_255.mean(axis=(0, 1)), len(CHANNELS))  # a 1-channel map serves all three
    return {"image": source.stem, **{f"std_{c}": float(v) for c, v in zip(CHANNELS, levels)}}


def _noise_table(runner: Runner, rows: list[dict]) -> None:
    """Write noise_levels.{csv,json,md} and print the table."""
    runner.results("noise_levels", rows, rows, markdown_table(
        ["image", "noise std R", "noise std G", "noise std B"],
        [[r["image"]] + [f"{r[f'std_{c}']:.2f}" for c in CHANNELS] for r in rows]))


def _sidd(args: argparse.Namespace, split: str, flip: str, suffix: str) -> int:
    """--sidd_val (metrics, optionally the .mat) or --sidd_test (the .mat files for the server)."""
    paths = [p for p in sidd_block_paths(args.sidd_val or args.sidd_test, test=split == "test") if p is not None]
    with user_errors(*DATA_ERRORS):
        blocks = SIDDBlocks(*paths)
    if split == "val" and min(blocks.noisy.shape[2:4]) < SSIM_MIN_SIDE:
        raise UserError(f"{paths[0]}: blocks of {blocks.noisy.shape[3]} x {blocks.noisy.shape[2]} pixels are too "
                        f"small for SSIM (min {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE})")
    runner, stem = Runner(args.out_path, suffix), f"sidd_{split}_{flip}"
    submission, mat = runner.file("SubmitSrgb", ext="mat"), runner.file(stem, ext="mat")
    outputs = [runner.file(stem, ext=ext) for ext in ("csv", "json", "md")] if split == "val" else [submission]
    write_mat = args.save_mat or split == "test"
    check_no_overwrite(outputs + ([mat] if write_mat else []), paths)
    restorer = runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip)
    denoised, rows = run_sidd(runner, blocks.noisy, blocks.gt)
    seconds_mp = restorer.seconds_per_megapixel
    if write_mat:
        save_mat(mat, {"denoised_res": denoised, "megatime": seconds_mp})
    if split == "test":
        save_mat(submission, sidd_submission(denoised, seconds_mp, device_name(restorer.device)))
        print(f"SIDD benchmark: {denoised.shape[0] * denoised.shape[1]} blocks denoised "
              f"({seconds_mp:.3g} s per megapixel); upload {submission}")
        return 0
    psnr, ssim = (float(np.mean([r[m] for r in rows])) for m in ("psnr", "ssim"))
    record = {**runner.run_info(args.ckpt_path or str(DEFAULT_CKPT)), "blocks": len(rows), "psnr": psnr,
              "ssim": ssim, "per_block": rows}
    table = markdown_table(["set", "blocks", "self-ensemble", "PSNR", "SSIM", "s / MP"],
                           [["SIDD val", len(rows), "yes" if args.flip else "no", f"{psnr:.2f}", f"{ssim:.4f}",
                             f"{seconds_mp:.3g}"]])
    runner.results(stem, rows + [{"image": "mean", "block": "all", "psnr": psnr, "ssim": ssim}], record, table,
                   f"SIDD validation, {len(rows)} blocks; results in {runner.out_dir}")
    return 0


def run_sidd(runner: Runner, noisy: np.ndarray, gt: Optional[np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """Denoise the n_img x n_blk x h x w x 3 uint8 ``noisy`` blocks in the reference's order; returns the
    denoised blocks (uint8 of the clipped output) and, with ``gt`` (the clean blocks, None for the
    benchmark), one row per block: 1-based image and block numbers, PSNR and SSIM (uint8 RGB, border 0)."""
    denoised, rows = np.zeros_like(noisy), []
    for i, k in progress(np.ndindex(noisy.shape[:2]), noisy.shape[0] * noisy.shape[1], "SIDD blocks", "blk"):
        denoised[i, k] = to_uint8(runner.restorer(noisy[i, k].astype(np.float32) / 255.0).image)
        if gt is not None:
            rows.append({"image": i + 1, "block": k + 1, "psnr": calculate_psnr(denoised[i, k], gt[i, k]),
                         "ssim": calculate_ssim(denoised[i, k], gt[i, k])})
    return denoised, rows


def run_dnd(runner: Runner, dnd_dir: Path, boxes: list[list], folder: str, ckpt: str) -> int:
    """Denoise every box of every DND image into ``<out>/<folder>/{i:04d}_{k:02d}.mat``, bundle them
    into ``<folder>/bundled/`` and write ``<folder>/summary.json``; returns 0."""
    total, crops, out = sum(len(b) for b in boxes), dnd_crops(dnd_dir), runner.out_dir / folder
    for _ in progress(range(total), total, "DND boxes", "box"):
        with user_errors(*DATA_ERRORS):
            i, k, crop = next(crops)
        save_dnd_crop(out, i, k, runner.restorer(crop).image)
    bundled = bundle_dnd_submission(out, n_images=len(boxes), n_boxes=len(boxes[0]))
    info = {**runner.run_info(ckpt), "images": len(boxes), "boxes": total}
    write_json(out / "summary.json", info)
    print(f"DND: {total} boxes of {len(boxes)} images denoised ({info['seconds_per_megapixel']:.3g} s per "
          f"megapixel); upload the files of {bundled}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
