#!/usr/bin/env python
"""VIRNet real-world denoising: restore your photos, or evaluate on SIDD and DND as the paper does.

  restore     python demo_test_denoising_real.py -i IMAGE|FOLDER -o DIR
              writes NAME.png and NAME_noise_std.png (heat map of the estimated noise std, 0-255, the
              mean of the R, G, B maps) per image, and noise_levels.{csv,json,md} (mean std per channel).
  SIDD val    python demo_test_denoising_real.py --protocol sidd_val [--data_root DIR] -o DIR [--flip] [--save_mat]
              PSNR / SSIM over the validation blocks of DIR (ValidationNoisyBlocksSrgb.mat,
              ValidationGtBlocksSrgb.mat; MATLAB v5 or v7.3) as the paper reports them (RGB, border 0,
              uint8 of the clipped output, mean over all blocks): sidd_val_{flip|noflip}.{csv,json,md};
              --save_mat adds sidd_val_{flip|noflip}.mat (denoised_res, megatime).
  SIDD test   python demo_test_denoising_real.py --protocol sidd_test [--data_root DIR] -o DIR [--flip]
              denoises BenchmarkNoisyBlocksSrgb.mat into sidd_test_{flip|noflip}.mat (as the reference)
              and SubmitSrgb.mat (the SIDD benchmark kit's layout) for the SIDD server.
  DND         python demo_test_denoising_real.py --protocol dnd [--data_root DIR] -o DIR [--flip]
              every box of info.mat in every image of DIR/images_srgb into dnd_{flip|noflip}/
              {i:04d}_{k:02d}.mat, bundled into dnd_{flip|noflip}/bundled/ for the DND server.
  no mode     a quick look: scikit-image's 'coffee' with synthesized camera noise (seed 0): coffee.png,
              coffee_noise_std.png (estimated | true), coffee_noisy.png, coffee_compare.png, quicklook.*

--data_root defaults to data/SIDD (SIDD) or data/DND (DND); --sidd_val DIR, --sidd_test DIR and --dnd DIR
are the same as --protocol with --data_root DIR.

Weights: the authors' model_zoo/virnet_denoising_real.pth if there (python -m utils.download_weights
denoising-real), else the shipped compact model_zoo/virnet_denoising_real_compact.safetensors (no SIDD).

--flip: the reference's 8-way flip / rotation self-ensemble (8 times slower). Timings: s per MP of model calls.
--strength K / --noise_map VALUE|FILE: the noise std map the restoration assumes, scaled or given.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from skimage import data as skimage_data

from networks import default_weights
from utils.devices import device_name
from utils.errors import UserError, user_errors
from utils.inference import (QUICK_LOOK_TAILS, SSIM_MIN_SIDE, Runner, Source, add_common_args, add_denoiser_args,
                             file_sources, markdown_table, progress, report_errors, write_json)

TASK = "denoising-real"
DEFAULT_CKPT = default_weights(TASK)
CHANNELS = ("r", "g", "b")
DATA_ERRORS = (FileNotFoundError, ValueError)  # the SIDD / DND readers' errors, one line naming the file
PROTOCOLS = {"sidd_val": "data/SIDD", "sidd_test": "data/SIDD", "dnd": "data/DND"}
"""--protocol choices and their default --data_root."""


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common demo flags plus the benchmark modes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, DEFAULT_CKPT)
    add_denoiser_args(parser)
    for flag, what in (("--sidd_val", "PSNR / SSIM on the SIDD validation blocks in DIR"),
                       ("--sidd_test", "denoise the SIDD benchmark blocks in DIR for the SIDD server"),
                       ("--dnd", "run the DND sRGB protocol on DIR (info.mat, images_srgb/)")):
        parser.add_argument(flag, metavar="DIR", default=None, help=what + f" (= --protocol {flag[2:]} --data_root DIR)")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                        help="run a benchmark protocol: sidd_val (PSNR / SSIM), sidd_test or dnd (files for their servers)")
    parser.add_argument("--data_root", metavar="DIR", default=None,
                        help="--protocol: the folder of its data (default data/SIDD for SIDD, data/DND for DND)")
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
    if args.data_root is not None and args.protocol is None:
        raise UserError("--data_root goes with --protocol sidd_val|sidd_test|dnd")
    if args.protocol is not None:
        if getattr(args, args.protocol) is not None:
            raise UserError(f"give --protocol {args.protocol} or --{args.protocol} DIR, not both")
        setattr(args, args.protocol, args.data_root or PROTOCOLS[args.protocol])
    modes = {"-i": args.in_path, "--sidd_val": args.sidd_val, "--sidd_test": args.sidd_test, "--dnd": args.dnd}
    chosen = [flag for flag, value in modes.items() if value is not None]
    if len(chosen) > 1:
        raise UserError(f"give at most one of -i IMAGE|FOLDER, --sidd_val DIR, --sidd_test DIR, --dnd DIR "
                        f"(got {' and '.join(chosen)})")
    if args.save_mat and args.sidd_val is None:
        raise UserError("--save_mat goes with --sidd_val (--sidd_test always writes its .mat files)")
    suffix, flip = f"_{args.prefix}" if args.prefix else "", "flip" if args.flip else "noflip"
    if not chosen:
        return _quick_look(args, Runner(args.out_path, suffix, args.overwrite))
    if args.in_path is not None:
        sources, runner = file_sources(args.in_path), Runner(args.out_path, suffix, args.overwrite)
        runner.check([s.stem for s in sources], ("", "_noise_std"), ("noise_levels",), [s.path for s in sources])
        runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip)
        return runner.images(sources, partial(_restore, runner), tabulate=partial(_noise_table, runner))
    if args.dnd is not None:
        return run_dnd(args, Runner(args.out_path, suffix, args.overwrite), Path(args.dnd), f"dnd_{flip}{suffix}")
    return _sidd(args, "val" if args.sidd_val is not None else "test", flip, suffix)


def _restore(runner: Runner, source: Source) -> dict:
    """Restore one photo, write it and its noise heat map; returns its row of noise levels."""
    result = runner.restore_file(source)
    runner.noise_picture(source.stem, result, detail=", average of R, G, B")
    levels = np.broadcast_to(result.noise_std_255.mean(axis=(0, 1)), len(CHANNELS))  # a 1-channel map serves all 3
    return {"image": source.stem, **{f"std_{c}": float(v) for c, v in zip(CHANNELS, levels)}}


def _quick_look(args: argparse.Namespace, runner: Runner) -> int:
    """No mode given: restore scikit-image's 'coffee' photograph with synthesized camera noise."""
    from datasets.camera_noise import camera_noise_with_std  # the data modules load in the modes that use them

    source = Source("coffee", None, skimage_data.coffee)
    add_noise = partial(camera_noise_with_std, rng=np.random.default_rng(0))
    runner.check([source.stem], QUICK_LOOK_TAILS, ("quicklook",))
    runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip)
    return runner.images([source], lambda s: runner.quick_look(s, s.load(), "camera", add_noise),
                         detail=" (no mode given: scikit-image's 'coffee' with synthesized camera noise)",
                         tabulate=runner.quick_look_table)


def _noise_table(runner: Runner, rows: list[dict]) -> None:
    """Write noise_levels.{csv,json,md} and print the table."""
    runner.results("noise_levels", rows, rows, markdown_table(
        ["image", "noise std R", "noise std G", "noise std B"],
        [[r["image"]] + [f"{r[f'std_{c}']:.2f}" for c in CHANNELS] for r in rows]))


def _sidd(args: argparse.Namespace, split: str, flip: str, suffix: str) -> int:
    """--sidd_val (metrics, optionally the .mat) or --sidd_test (the .mat files for the server)."""
    from datasets.real import SIDDBlocks, denoise_sidd_blocks, save_mat, sidd_block_paths, sidd_submission

    paths = [p for p in sidd_block_paths(args.sidd_val or args.sidd_test, test=split == "test") if p is not None]
    with user_errors(*DATA_ERRORS):
        blocks = SIDDBlocks(*paths)
    if split == "val" and min(blocks.noisy.shape[2:4]) < SSIM_MIN_SIDE:
        raise UserError(f"{paths[0]}: blocks of {blocks.noisy.shape[3]} x {blocks.noisy.shape[2]} pixels are too "
                        f"small for SSIM (min {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE})")
    runner, stem = Runner(args.out_path, suffix, args.overwrite), f"sidd_{split}_{flip}"
    submission, mat = runner.file("SubmitSrgb", ext="mat"), runner.file(stem, ext="mat")
    outputs = [runner.file(stem, ext=ext) for ext in ("csv", "json", "md")] if split == "val" else [submission]
    write_mat = args.save_mat or split == "test"
    runner.check_files(outputs + ([mat] if write_mat else []), paths)
    restorer = runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip, protocol=True)
    denoised, rows = denoise_sidd_blocks(lambda im: runner.restorer(im).image, blocks.noisy, blocks.gt,
                                         partial(progress, desc="SIDD blocks", unit="blk"))
    seconds_mp = restorer.seconds_per_megapixel
    if write_mat:
        save_mat(mat, {"denoised_res": denoised, "megatime": seconds_mp})
    if split == "test":
        save_mat(submission, sidd_submission(denoised, seconds_mp, device_name(restorer.device)))
        runner.record_outputs()
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


def run_dnd(args: argparse.Namespace, runner: Runner, dnd_dir: Path, folder: str) -> int:
    """Denoise every DND box into ``<out>/<folder>/`` (``datasets.real.denoise_dnd``) and write
    ``<folder>/summary.json``; returns 0."""
    from datasets.real import denoise_dnd, load_dnd_info

    with user_errors(*DATA_ERRORS):
        boxes = load_dnd_info(dnd_dir)
    if not boxes or len({len(b) for b in boxes}) != 1:
        raise UserError(f"{dnd_dir / 'info.mat'}: expected the same number of boxes for every image, "
                        f"got {[len(b) for b in boxes]}")
    out, total = runner.check_folder(folder), sum(len(b) for b in boxes)
    runner.load(args, TASK, DEFAULT_CKPT, flip=args.flip, protocol=True)
    with user_errors(*DATA_ERRORS):
        bundled = denoise_dnd(lambda im: runner.restorer(im).image, dnd_dir, boxes, out,
                              partial(progress, desc="DND boxes", unit="box"))
    info = {**runner.run_info(args.ckpt_path or str(DEFAULT_CKPT)), "images": len(boxes), "boxes": total}
    write_json(out / "summary.json", info)
    runner.record_outputs()
    print(f"DND: {total} boxes of {len(boxes)} images denoised ({info['seconds_per_megapixel']:.3g} s per "
          f"megapixel); upload the files of {bundled}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
