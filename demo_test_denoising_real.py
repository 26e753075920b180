#!/usr/bin/env python
"""VIRNet real-world denoising: restore your photos, or evaluate on SIDD and DND as the paper does.

  restore     python demo_test_denoising_real.py -i IMAGE|FOLDER -o DIR
              writes NAME.png (restored) and NAME_noise_std.png (heat map of the estimated noise
              std in 0-255 units, the mean of the R, G and B maps) per image, and
              noise_levels.{csv,json,md} with each image's mean noise std per colour channel.
  SIDD val    python demo_test_denoising_real.py --sidd_val DIR -o DIR [--flip] [--save_mat]
              PSNR / SSIM over the validation blocks of DIR (ValidationNoisyBlocksSrgb.mat and
              ValidationGtBlocksSrgb.mat, MATLAB v5 or v7.3) as the paper reports them: RGB,
              border 0, on the uint8 of the clipped output, mean over all blocks (1280). Writes
              sidd_val_{flip|noflip}.{csv,json,md}; --save_mat adds sidd_val_{flip|noflip}.mat
              (denoised_res: the uint8 blocks, megatime: seconds per megapixel).
  SIDD test   python demo_test_denoising_real.py --sidd_test DIR -o DIR [--flip]
              denoises BenchmarkNoisyBlocksSrgb.mat; writes sidd_test_{flip|noflip}.mat (as the
              reference) and SubmitSrgb.mat (DenoisedBlocksSrgb, TimeMPSrgb, OptionalData: the
              layout of the SIDD benchmark kit) for the SIDD server.
  DND         python demo_test_denoising_real.py --dnd DIR -o DIR [--flip]
              every bounding box of info.mat in every image of DIR/images_srgb: one
              dnd_{flip|noflip}/{i:04d}_{k:02d}.mat per box (Idenoised_crop), then the bundle
              dnd_{flip|noflip}/bundled/{i:04d}.mat to upload to the DND server.

--flip: the self-ensemble of the reference's evaluation scripts (which use it by default): the mean
of the raw outputs over the 8 flips / rotations, then clipped; 8 times slower. Timings (seconds
per megapixel) are wall-clock model calls including host-device copies.
The checkpoint defaults to model_zoo/virnet_denoising_real.pth (--ckpt_path to change it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import scipy.io
import torch
from tqdm import tqdm

from datasets.real import (bundle_dnd_submission, dnd_crops, load_dnd_info, load_sidd_blocks,
                           save_dnd_crop, self_ensemble, sidd_block_paths)
from utils.image_io import ImageReadError, atomic_write, read_image, to_uint8, write_image
from utils.inference import (DemoError, InputImageError, Restorer, add_common_args, check_no_overwrite,
                             image_file_notes, input_files, markdown_table, prepare_output_dir, report_errors,
                             restorer_from_args, run_model, write_csv, write_json, write_text)
from utils.metrics import calculate_psnr, calculate_ssim
from utils.visualize import noise_heatmap

TASK = "denoising-real"
DEFAULT_CKPT = Path(__file__).resolve().parent / "model_zoo" / "virnet_denoising_real.pth"
MEGAPIXEL = 1024 * 1024
"""Pixels per megapixel in the timings (the reference's ``megatime``)."""
CHANNELS = ("r", "g", "b")
SSIM_MIN_SIDE = 11


class Denoised(NamedTuple):
    """One restored image: ``image`` H x W x 3 float32 in [0, 1] (clipped), ``noise_var`` the
    estimated noise variance H x W x C float32 on the [0, 1] scale (C = 3, one map per colour, for
    the released model), ``seconds`` spent in the model."""
    image: np.ndarray
    noise_var: np.ndarray
    seconds: float


def build_parser() -> argparse.ArgumentParser:
    """The command line: the common demo flags plus the benchmark modes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, DEFAULT_CKPT)
    parser.add_argument("--sidd_val", metavar="DIR", default=None,
                        help="PSNR / SSIM on the SIDD validation blocks in DIR")
    parser.add_argument("--sidd_test", metavar="DIR", default=None,
                        help="denoise the SIDD benchmark blocks in DIR for the SIDD server")
    parser.add_argument("--dnd", metavar="DIR", default=None,
                        help="run the DND sRGB protocol on DIR (info.mat, images_srgb/)")
    parser.add_argument("--flip", action="store_true",
                        help="self-ensemble over the 8 flips / rotations (the reference's evaluation default)")
    parser.add_argument("--save_mat", action="store_true",
                        help="--sidd_val: also write the denoised blocks as sidd_val_{flip|noflip}.mat")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 done, 1 nothing could be done or an error)."""
    return report_errors(_run, argv)


def _run(argv: Optional[Sequence[str]]) -> int:
    """Parse the flags, then run the chosen mode (each checks its inputs and outputs before it loads
    the model)."""
    args = build_parser().parse_args(argv)
    modes = {"-i": args.in_path, "--sidd_val": args.sidd_val, "--sidd_test": args.sidd_test, "--dnd": args.dnd}
    chosen = [flag for flag, value in modes.items() if value is not None]
    if len(chosen) != 1:
        given = f" (got {' and '.join(chosen)})" if chosen else ""
        raise DemoError(f"give exactly one of -i IMAGE|FOLDER, --sidd_val DIR, --sidd_test DIR, --dnd DIR{given}")
    if args.save_mat and args.sidd_val is None:
        raise DemoError("--save_mat goes with --sidd_val (--sidd_test always writes its .mat files)")
    suffix = f"_{args.prefix}" if args.prefix else ""
    if args.in_path is not None:
        return _restore_mode(args, suffix)
    if args.dnd is not None:
        return _dnd_mode(args, suffix)
    return _sidd_mode(args, "val" if args.sidd_val is not None else "test", suffix)


def _restore_mode(args: argparse.Namespace, suffix: str) -> int:
    """-i: restore photos."""
    sources = input_files(args.in_path)
    out_dir = prepare_output_dir(args.out_path)
    outputs = [out_dir / name for path in sources for name in _output_names(path.stem, suffix)]
    outputs += [out_dir / f"noise_levels{suffix}.{ext}" for ext in ("csv", "json", "md")]
    check_no_overwrite(outputs, sources)
    restorer = restorer_from_args(args, TASK, DEFAULT_CKPT)
    return run_images(restorer, sources, out_dir, suffix, args.flip)


def _dnd_mode(args: argparse.Namespace, suffix: str) -> int:
    """--dnd: the DND protocol into OUT/dnd_{flip|noflip}."""
    boxes = _dnd_boxes(Path(args.dnd))
    out = prepare_output_dir(args.out_path) / f"dnd_{'flip' if args.flip else 'noflip'}{suffix}"
    restorer = restorer_from_args(args, TASK, DEFAULT_CKPT)
    return run_dnd(restorer, Path(args.dnd), boxes, out, args.flip, args.ckpt_path or str(DEFAULT_CKPT))


def _sidd_mode(args: argparse.Namespace, split: str, suffix: str) -> int:
    """--sidd_val (metrics, optionally the .mat) or --sidd_test (the .mat files for the server)."""
    paths = [p for p in sidd_block_paths(args.sidd_val or args.sidd_test, test=split == "test") if p is not None]
    blocks = [_load_blocks(p) for p in paths]
    if len(blocks) == 2 and blocks[0].shape != blocks[1].shape:
        raise DemoError(f"{paths[1]}: blocks of shape {blocks[1].shape} do not match the noisy blocks "
                        f"{blocks[0].shape}")
    if split == "val" and min(blocks[0].shape[2:4]) < SSIM_MIN_SIDE:
        raise DemoError(f"{paths[0]}: blocks of {blocks[0].shape[3]} x {blocks[0].shape[2]} pixels are too small "
                        f"for SSIM (min {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE})")
    out_dir = prepare_output_dir(args.out_path)
    stem = f"sidd_{split}_{'flip' if args.flip else 'noflip'}{suffix}"
    submission, write_mat = out_dir / f"SubmitSrgb{suffix}.mat", args.save_mat or split == "test"
    outputs = [out_dir / f"{stem}.{ext}" for ext in ("csv", "json", "md")] if split == "val" else [submission]
    check_no_overwrite(outputs + ([out_dir / f"{stem}.mat"] if write_mat else []), paths)
    restorer = restorer_from_args(args, TASK, DEFAULT_CKPT)
    denoised, seconds_mp, rows = run_sidd(restorer, blocks[0], blocks[1] if split == "val" else None, args.flip)
    if write_mat:
        save_mat(out_dir / f"{stem}.mat", {"denoised_res": denoised, "megatime": seconds_mp})
    if split == "test":
        save_mat(submission, sidd_submission(denoised, seconds_mp, restorer))
        print(f"SIDD benchmark: {denoised.shape[0] * denoised.shape[1]} blocks denoised "
              f"({seconds_mp:.3g} s per megapixel); upload {submission}")
        return 0
    write_sidd_tables(rows, out_dir, stem, {"checkpoint": args.ckpt_path or str(DEFAULT_CKPT), "flip": args.flip,
                                            "device": _device_name(restorer), "precision": restorer.precision,
                                            "seconds_per_megapixel": seconds_mp})
    return 0


# --------------------------------------------------------------------------- the model

def denoise(restorer: Restorer, im: np.ndarray, flip: bool = False) -> Denoised:
    """Restore ``im`` (H x W x 3 float32, nominally [0, 1]) with the restorer's device, precision
    and tiling; with ``flip`` the raw outputs (image and variance) are averaged over the 8 flips /
    rotations before the image is clipped, as the reference's evaluation scripts do.

    Raises InputImageError when the image is not H x W x 3 or a side is shorter than the model's
    minimum.
    """
    if im.ndim != 3 or im.shape[2] != 3:
        raise InputImageError(f"expected an H x W x 3 image, got shape {im.shape}")
    height, width = im.shape[:2]
    if min(height, width) < restorer.min_side:
        raise InputImageError(f"image too small: {width} x {height} (min {restorer.min_side} x {restorer.min_side})")
    x = torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32).transpose(2, 0, 1))[None]

    def forward(t: torch.Tensor) -> torch.Tensor:  # 1 x 3 x h x w -> 1 x (3 + sigma_chn) x h x w
        outputs, _ = run_model(restorer.net, t, tile=restorer.tile, overlap=restorer.overlap,
                               precision=restorer.precision)
        return torch.cat(outputs, dim=1)

    start = time.perf_counter()
    out = self_ensemble(forward, x) if flip else forward(x)
    seconds = time.perf_counter() - start
    image = out[0, :3].clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    return Denoised(image, out[0, 3:].permute(1, 2, 0).numpy(), seconds)


def _device_name(restorer: Restorer) -> str:
    device = next(restorer.net.parameters()).device
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# --------------------------------------------------------------------------- restore photos

def _output_names(stem: str, suffix: str) -> tuple[str, str]:
    """(restored image, noise heat map) file names of one input."""
    return f"{stem}{suffix}.png", f"{stem}{suffix}_noise_std.png"


def run_images(restorer: Restorer, sources: Sequence[Path], out_dir: Path, suffix: str, flip: bool) -> int:
    """Restore every image, write it and its noise heat map, then the table of per-channel noise
    levels; unusable images are skipped with one line each. Returns 0 when at least one image was
    done, else 1."""
    rows = []
    for path in tqdm(sources, desc="images", unit="img", disable=None):
        try:
            im = read_image(path)
            notes = image_file_notes(path)
            if restorer.will_tile(*im.shape[:2]):
                notes.append(f"{im.shape[1]} x {im.shape[0]}, restored in {restorer.tile} px tiles "
                             f"(overlap {restorer.overlap})")
            if notes:
                tqdm.write(f"note: {path.name}: {'; '.join(notes)}", file=sys.stderr)
            result = denoise(restorer, im, flip)
        except (ImageReadError, InputImageError) as err:
            tqdm.write(f"skipped {path.name}: {err}", file=sys.stderr)
            continue
        restored_name, heatmap_name = _output_names(path.stem, suffix)
        std_255 = np.sqrt(result.noise_var) * 255.0
        write_image(out_dir / restored_name, result.image)
        noise_heatmap(out_dir / heatmap_name, std_255, title="estimated noise std, average of R, G, B")
        levels = np.broadcast_to(std_255.mean(axis=(0, 1)), len(CHANNELS))  # a 1-channel map serves all three
        rows.append({"image": path.stem, **{f"std_{c}": float(v) for c, v in zip(CHANNELS, levels)}})
    skipped = len(sources) - len(rows)
    if rows:
        write_csv(out_dir / f"noise_levels{suffix}.csv", rows)
        write_json(out_dir / f"noise_levels{suffix}.json", rows)
        table = markdown_table(["image", "noise std R", "noise std G", "noise std B"],
                               [[r["image"]] + [f"{r[f'std_{c}']:.2f}" for c in CHANNELS] for r in rows])
        write_text(out_dir / f"noise_levels{suffix}.md", table)
        print(table, end="")
    print(f"restored {len(rows)} of {len(sources)} image(s)" + (f", skipped {skipped}" if skipped else "")
          + f"; results in {out_dir}")
    return 0 if rows else 1


# --------------------------------------------------------------------------- SIDD

def _load_blocks(path: Path) -> np.ndarray:
    """A SIDD block file as n_img x n_blk x h x w x 3 uint8; raises DemoError naming the problem."""
    try:
        return load_sidd_blocks(path)
    except (FileNotFoundError, ValueError) as err:
        raise DemoError(str(err)) from None


def run_sidd(restorer: Restorer, noisy: np.ndarray, gt: Optional[np.ndarray],
             flip: bool) -> tuple[np.ndarray, float, list[dict]]:
    """Denoise every SIDD block, image by image, block by block (the reference's order).

    ``noisy``, ``gt``: n_img x n_blk x h x w x 3 uint8 (``gt`` None for the benchmark). Returns the
    denoised blocks (uint8 of the clipped output, ``noisy``'s shape), the model time in seconds per
    megapixel, and one row per block (1-based image and block numbers; PSNR and SSIM on uint8 RGB,
    border 0, when ``gt`` is given).
    """
    n_img, n_blk, height, width, _ = noisy.shape
    denoised = np.zeros_like(noisy)
    rows, seconds = [], 0.0
    with tqdm(total=n_img * n_blk, desc="SIDD blocks", unit="blk", disable=None) as bar:
        for i in range(n_img):
            for k in range(n_blk):
                result = denoise(restorer, noisy[i, k].astype(np.float32) / 255.0, flip)
                denoised[i, k] = to_uint8(result.image)
                seconds += result.seconds
                if gt is not None:
                    rows.append({"image": i + 1, "block": k + 1, "psnr": calculate_psnr(denoised[i, k], gt[i, k]),
                                 "ssim": calculate_ssim(denoised[i, k], gt[i, k])})
                bar.update(1)
    return denoised, seconds * MEGAPIXEL / (n_img * n_blk * height * width), rows


def write_sidd_tables(rows: list[dict], out_dir: Path, stem: str, info: dict) -> None:
    """Write the per-block metrics and their means as ``stem.{csv,json,md}``; prints the table."""
    psnr = float(np.mean([r["psnr"] for r in rows]))
    ssim = float(np.mean([r["ssim"] for r in rows]))
    write_csv(out_dir / f"{stem}.csv", rows + [{"image": "mean", "block": "all", "psnr": psnr, "ssim": ssim}])
    write_json(out_dir / f"{stem}.json", {**info, "blocks": len(rows), "psnr": psnr, "ssim": ssim, "per_block": rows})
    table = markdown_table(["set", "blocks", "self-ensemble", "PSNR", "SSIM", "s / MP"],
                           [["SIDD val", len(rows), "yes" if info["flip"] else "no", f"{psnr:.2f}", f"{ssim:.4f}",
                             f"{info['seconds_per_megapixel']:.3g}"]])
    write_text(out_dir / f"{stem}.md", table)
    print(f"SIDD validation, {len(rows)} blocks; results in {out_dir}")
    print(table, end="")


def sidd_submission(denoised: np.ndarray, seconds_mp: float, restorer: Restorer) -> dict:
    """The variables of the SIDD kit's ``SubmitSrgb.mat``: ``DenoisedBlocksSrgb`` (an n_img x n_blk
    cell of h x w x 3 uint8 blocks), ``TimeMPSrgb`` (seconds per megapixel), ``OptionalData``."""
    cells = np.empty(denoised.shape[:2], dtype=object)
    for index in np.ndindex(cells.shape):
        cells[index] = denoised[index]
    return {"DenoisedBlocksSrgb": cells, "TimeMPSrgb": seconds_mp,
            "OptionalData": {"MethodName": "VIRNet", "MachineSpecs": _device_name(restorer)}}


def save_mat(path: Path, variables: dict) -> None:
    """Write a MATLAB v5 file atomically."""
    atomic_write(path, lambda tmp: scipy.io.savemat(tmp, variables, appendmat=False))


# --------------------------------------------------------------------------- DND

def _dnd_boxes(dnd_dir: Path) -> list[list]:
    """The bounding boxes of ``dnd_dir/info.mat``; raises DemoError for missing or bad files and when
    the images have different numbers of boxes (the submission bundle needs one count)."""
    try:
        boxes = load_dnd_info(dnd_dir)
    except (FileNotFoundError, ValueError) as err:
        raise DemoError(str(err)) from None
    if not boxes or len({len(b) for b in boxes}) != 1:
        raise DemoError(f"{dnd_dir / 'info.mat'}: expected the same number of boxes for every image, got "
                        f"{[len(b) for b in boxes]}")
    return boxes


def _data_errors(items: Iterable) -> Iterator:
    """Iterate ``items``, turning the data readers' FileNotFoundError / ValueError into DemoError."""
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (FileNotFoundError, ValueError) as err:
            raise DemoError(str(err)) from None
        yield item


def run_dnd(restorer: Restorer, dnd_dir: Path, boxes: list[list], out: Path, flip: bool, ckpt: str) -> int:
    """Denoise every box of every DND image into ``out/{i:04d}_{k:02d}.mat``, bundle them into
    ``out/bundled/`` and write ``out/summary.json``; returns 0."""
    total = sum(len(b) for b in boxes)
    seconds, pixels = 0.0, 0
    for i, k, crop in tqdm(_data_errors(dnd_crops(dnd_dir)), total=total, desc="DND boxes", unit="box", disable=None):
        result = denoise(restorer, crop, flip)
        save_dnd_crop(out, i, k, result.image)
        seconds += result.seconds
        pixels += crop.shape[0] * crop.shape[1]
    bundled = bundle_dnd_submission(out, n_images=len(boxes), n_boxes=len(boxes[0]))
    seconds_mp = seconds * MEGAPIXEL / pixels
    write_json(out / "summary.json", {"checkpoint": ckpt, "flip": flip, "device": _device_name(restorer),
                                      "precision": restorer.precision, "images": len(boxes), "boxes": total,
                                      "seconds_per_megapixel": seconds_mp})
    print(f"DND: {total} boxes of {len(boxes)} images denoised ({seconds_mp:.3g} s per megapixel); "
          f"upload the files of {bundled}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
