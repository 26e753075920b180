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

Weights: by default the project-trained compact model that ships in the repository
(model_zoo/virnet_denoising_syn_compact.pth); --ckpt_path model_zoo/virnet_denoising_syn.pth takes
the authors' released weights (full configuration, downloaded separately). The demo prints which.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
from skimage import data as skimage_data
from tqdm import tqdm

from datasets import synthetic_test_pairs
from datasets.noise_maps import normalise_map, peaks, resize_map
from datasets.synthetic_test import IID_SIGMAS
from utils.image_io import ImageReadError, list_images, read_image, read_image_uint8, write_image
from utils.inference import (DemoError, InputImageError, Restorer, add_common_args, check_no_overwrite,
                             image_file_notes, input_files, markdown_table, prepare_output_dir, protocol_dirs,
                             report_errors, restorer_from_args, write_csv, write_json, write_text)
from utils.metrics import calculate_psnr, calculate_ssim
from utils.visualize import noise_heatmap, side_by_side

TASK = "denoising-syn"
DEFAULT_CKPT = Path(__file__).resolve().parent / "model_zoo" / "virnet_denoising_syn_compact.pth"
"""The shipped project-trained compact denoiser (configs/denoising_syn_compact.json)."""
SSIM_MIN_SIDE = 11
PROTOCOL_METRICS = ("psnr", "ssim", "psnr_noisy", "ssim_noisy")
"""Per-image protocol metrics: the restoration's, and the noisy input's as the classical baseline."""


class Source(NamedTuple):
    """One image to process: its output stem, its file (None for the embedded sample) and a loader
    returning H x W x 3 uint8 (quick look) or float32 in [0, 1] (restore)."""
    stem: str
    path: Optional[Path]
    load: Callable[[], np.ndarray]


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
    parser.add_argument("--data_root", default="test_data", help="folder holding the test sets (protocol)")
    parser.add_argument("--datasets", nargs="+", default=["CBSD68", "McMaster"],
                        help="test-set folders under --data_root (protocol; default CBSD68 McMaster)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 done, 1 nothing could be done or an error)."""
    return report_errors(_run, argv)


def _run(argv: Optional[Sequence[str]]) -> int:
    """Parse the flags, check inputs and outputs, load the model, then run the chosen mode."""
    args = build_parser().parse_args(argv)
    if args.protocol and (args.in_path or args.add_noise is not None):
        raise DemoError("--protocol takes its images from --data_root/--datasets; drop -i and --add_noise")
    suffix = f"_{args.prefix}" if args.prefix else ""
    if args.protocol:
        dirs = protocol_dirs(args.data_root, args.datasets)
        out_dir = prepare_output_dir(args.out_path)
        restorer = restorer_from_args(args, TASK, DEFAULT_CKPT)
        return run_protocol(restorer, args.protocol, dirs, out_dir, suffix, args.ckpt_path or str(DEFAULT_CKPT))
    noise = args.add_noise
    if args.in_path is None:
        noise = "niid" if noise is None else noise
        sources = [_embedded_sample()]
    else:
        sources = _file_sources(Path(args.in_path), uint8=noise is not None)
    out_dir = prepare_output_dir(args.out_path)
    _check_outputs(sources, out_dir, suffix, quick_look=noise is not None)
    restorer = restorer_from_args(args, TASK, DEFAULT_CKPT)
    if args.in_path is None:
        print(f"no -i given: a quick look at scikit-image's 'chelsea' sample with "
              f"{_noise_label(noise)} noise", file=sys.stderr)
    return run_images(restorer, sources, out_dir, suffix, noise, args.seed)


# --------------------------------------------------------------------------- inputs and outputs

def _embedded_sample() -> Source:
    """scikit-image's 'chelsea' photograph (451 x 300, shipped with the package) as a clean image."""
    return Source("chelsea", None, skimage_data.chelsea)


def _file_sources(in_path: Path, uint8: bool) -> list[Source]:
    """The images named by -i (see ``input_files``), read as uint8 or float32."""
    reader = read_image_uint8 if uint8 else read_image
    return [Source(p.stem, p, lambda p=p: reader(p)) for p in input_files(in_path)]


def _output_names(stem: str, suffix: str, quick_look: bool) -> dict[str, str]:
    """File names written for one image, by role."""
    names = {"restored": f"{stem}{suffix}.png", "noise_std": f"{stem}{suffix}_noise_std.png"}
    if quick_look:
        names.update(noisy=f"{stem}{suffix}_noisy.png", compare=f"{stem}{suffix}_compare.png")
    return names


def _check_outputs(sources: Sequence[Source], out_dir: Path, suffix: str, quick_look: bool) -> None:
    """Refuse to start when an output would overwrite an input or another output."""
    outputs = [out_dir / name for s in sources for name in _output_names(s.stem, suffix, quick_look).values()]
    if quick_look:
        outputs += [out_dir / f"quicklook{suffix}.{ext}" for ext in ("csv", "json", "md")]
    check_no_overwrite(outputs, [s.path for s in sources if s.path is not None])


def _noise_label(noise: str | float) -> str:
    """How the added noise is described to the user."""
    return "non-i.i.d. ('peaks' map, std 10-75)" if noise == "niid" else f"i.i.d. (std {noise:g})"


def noise_std_map(noise: str | float, height: int, width: int) -> np.ndarray:
    """The quick-look noise std on the [0, 1] scale as an H x W x 1 float32 map: the protocol's
    case-1 'peaks' map (10/255 to 75/255) stretched to the image for 'niid', else constant."""
    if noise == "niid":
        return resize_map(normalise_map(peaks(256)), width, height)[:, :, None]
    return np.full((height, width, 1), noise / 255.0, dtype=np.float32)


# --------------------------------------------------------------------------- restore / quick look

def run_images(restorer: Restorer, sources: Sequence[Source], out_dir: Path, suffix: str,
               noise: str | float | None, seed: int) -> int:
    """Restore every source (adding noise first in quick look) and write the outputs; unusable
    images are skipped with one line each. Returns 0 when at least one image was done, else 1."""
    rng = np.random.default_rng(seed)
    rows, skipped = [], 0
    for source in tqdm(sources, desc="images", unit="img", disable=None):
        name = source.path.name if source.path else source.stem
        try:
            row = _process(restorer, source, out_dir, suffix, noise, rng)
        except (ImageReadError, InputImageError) as err:
            skipped += 1
            tqdm.write(f"skipped {name}: {err}", file=sys.stderr)
            continue
        if row is not None:
            rows.append(row)
    done = len(sources) - skipped
    if rows:
        _write_quick_look_table(rows, out_dir, suffix)
    print(f"restored {done} of {len(sources)} image(s)" + (f", skipped {skipped}" if skipped else "")
          + f"; results in {out_dir}")
    return 0 if done else 1


def _process(restorer: Restorer, source: Source, out_dir: Path, suffix: str,
             noise: str | float | None, rng: np.random.Generator) -> Optional[dict]:
    """Restore one source and write its files; returns its metrics row in quick look, else None."""
    notes = image_file_notes(source.path) if source.path else []
    im = source.load()
    height, width = im.shape[:2]
    if noise is not None:
        if min(height, width) < SSIM_MIN_SIDE:
            raise InputImageError(f"image too small for the quick look's SSIM: {width} x {height} "
                                  f"(min {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE})")
        clean = im
        std = noise_std_map(noise, height, width)
        noise_draw = (rng.standard_normal(clean.shape) * std).astype(np.float32)
        im = np.multiply(clean, 1.0 / 255, dtype=np.float32) + noise_draw
    if restorer.will_tile(height, width):
        notes.append(f"{width} x {height}, restored in {restorer.tile} px tiles (overlap {restorer.overlap})")
    if notes:
        tqdm.write(f"note: {source.path.name if source.path else source.stem}: {'; '.join(notes)}", file=sys.stderr)
    result = restorer(im)
    names = _output_names(source.stem, suffix, noise is not None)
    write_image(out_dir / names["restored"], result.image)
    true_std = None if noise is None else std * 255.0
    noise_heatmap(out_dir / names["noise_std"], result.noise_std_255, true_std)
    if noise is None:
        return None
    write_image(out_dir / names["noisy"], im)
    side_by_side(out_dir / names["compare"], [im, result.image, clean], ["noisy", "restored", "clean"])
    return {"image": source.stem, "noise": "niid" if noise == "niid" else f"sigma{noise:g}",
            "psnr_noisy": calculate_psnr(im, clean), "ssim_noisy": calculate_ssim(im, clean),
            "psnr": calculate_psnr(result.image, clean), "ssim": calculate_ssim(result.image, clean)}


def _write_quick_look_table(rows: list[dict], out_dir: Path, suffix: str) -> None:
    """Write quicklook.{csv,json,md} and print the markdown table."""
    write_csv(out_dir / f"quicklook{suffix}.csv", rows)
    write_json(out_dir / f"quicklook{suffix}.json", rows)
    table = markdown_table(["image", "noise", "PSNR noisy", "PSNR", "SSIM noisy", "SSIM"],
                           [[r["image"], r["noise"], f"{r['psnr_noisy']:.2f}", f"{r['psnr']:.2f}",
                             f"{r['ssim_noisy']:.4f}", f"{r['ssim']:.4f}"] for r in rows])
    write_text(out_dir / f"quicklook{suffix}.md", table)
    print(table, end="")


# --------------------------------------------------------------------------- protocol

def case_labels(noise_type: str) -> list[str]:
    """Labels of cases 1..3: 'case1'..'case3' (niid) or 'sigma15', 'sigma25', 'sigma50' (iid),
    as in the reference's result files."""
    if noise_type == "niid":
        return [f"case{c}" for c in (1, 2, 3)]
    return [f"sigma{s}" for s in IID_SIGMAS]


def run_protocol(restorer: Restorer, noise_type: str, dirs: dict[str, Path], out_dir: Path,
                 suffix: str, ckpt: str) -> int:
    """Run the synthetic protocol and write per-image and mean PSNR/SSIM (RGB, uint8, border 0) of the
    restoration and of the noisy input (the baseline, clipped and quantised alike) as
    virnet_denoising_{type}.{csv,json,md}; prints the dataset x case table. Returns 0."""
    labels = case_labels(noise_type)
    total = 3 * sum(len(list_images(d)) for d in dirs.values())
    rows = []
    pairs = synthetic_test_pairs(noise_type, dirs)
    for dataset, case, name, im_gt, im_noisy in tqdm(pairs, total=total, desc=noise_type, unit="img", disable=None):
        restored = restorer(im_noisy).image
        rows.append({"dataset": dataset, "case": labels[case - 1], "image": name,
                     "psnr": calculate_psnr(restored, im_gt), "ssim": calculate_ssim(restored, im_gt),
                     "psnr_noisy": calculate_psnr(im_noisy, im_gt), "ssim_noisy": calculate_ssim(im_noisy, im_gt)})
    means = {d: {c: {m: float(np.mean([r[m] for r in rows if r["dataset"] == d and r["case"] == c]))
                     for m in PROTOCOL_METRICS} for c in labels} for d in dirs}
    stem = f"virnet_denoising_{noise_type}{suffix}"
    mean_rows = [{"dataset": d, "case": c, "image": "mean", **means[d][c]} for d in dirs for c in labels]
    write_csv(out_dir / f"{stem}.csv", rows + mean_rows)
    write_json(out_dir / f"{stem}.json", {"protocol": noise_type, "checkpoint": ckpt,
                                            "datasets": list(dirs), "mean": means, "images": rows})
    table = markdown_table(["dataset", "method"] + [f"{c} PSNR / SSIM" for c in labels],
                           [[d, method] + [f"{means[d][c]['psnr' + tail]:.2f} / {means[d][c]['ssim' + tail]:.4f}"
                                           for c in labels]
                            for d in dirs for method, tail in (("VIRNet", ""), ("noisy input", "_noisy"))])
    write_text(out_dir / f"{stem}.md", table)
    print(f"{noise_type} protocol, {len(rows)} restorations; results in {out_dir}")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
