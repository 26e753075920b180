"""The denoisers' strength control over K: PSNR and total variation of the output.

The shipped synthetic denoiser restores CBSD68 with the synthetic protocol's i.i.d. noise (std 15, 25,
50; ``datasets.synthetic_test``: the protocol's own noisy images) at ``--strength K`` for K in
``--strengths``, and once more with the true std given as the map (``--noise_map SIGMA``), to be
compared with the blind default (K = 1). The shipped real-noise denoiser does the same on the images
with synthesized camera noise (``datasets.camera_noise``, image i drawn from ``default_rng([2024, i])``
as bench/camera_noise.py does), its "true map" the measured noise std averaged over the channels.
Total variation: ``utils.inference.noise_control.total_variation`` (mean absolute difference of
vertical plus horizontal neighbours, 0-255 units). Each image is cropped at its centre to at most
``--max_side`` pixels a side (after the noise is drawn; camera noise is drawn on the crop).

    python bench/strength.py --images 12 --max_side 256 --strip docs/figures/strength_strip.png

Writes ``bench/results/strength_<task>_<device class>.{csv,json,md}`` (``bench.common.result_path``; ``--out``) and prints the table;
``--strip PNG`` also writes a strip of one crop over K (noisy, each K, clean).
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench.common as common  # noqa: E402
from datasets.camera_noise import camera_noise_with_std  # noqa: E402
from datasets.synthetic_test import IID_SIGMAS, synthetic_test_pairs  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.image_io import atomic_write, list_images, read_image_uint8, to_uint8  # noqa: E402
from utils.inference import NoiseControl, Restorer, load_model, markdown_table, write_results  # noqa: E402
from utils.inference.noise_control import total_variation  # noqa: E402
from utils.metrics import calculate_psnr  # noqa: E402

MODELS = {"denoising-syn": ROOT / "model_zoo/virnet_denoising_syn_compact.safetensors",
          "denoising-real": ROOT / "model_zoo/virnet_denoising_real_compact.safetensors"}
CAMERA_SEED = 2024
STRIP_TILE = 128


def centre_crop(im: np.ndarray, max_side: int, even: bool = False) -> np.ndarray:
    """The centre of an H x W (x C) image, at most ``max_side`` a side (0: whole); ``even``: sides
    rounded down to even (the Bayer cells of camera noise)."""
    h, w = im.shape[:2]
    ch, cw = (min(h, max_side), min(w, max_side)) if max_side else (h, w)
    if even:
        ch, cw = ch // 2 * 2, cw // 2 * 2
    top, left = (h - ch) // 2, (w - cw) // 2
    return im[top:top + ch, left:left + cw]


def test_cases(task: str, data: Path, images: int, max_side: int) -> list[tuple[str, str, np.ndarray, np.ndarray, float]]:
    """(case, image name, clean uint8 crop, noisy float32 crop, true std in 0-255 units) per image:
    the i.i.d. cases 'sigma15', 'sigma25', 'sigma50' for the synthetic denoiser, 'camera' for the
    real-noise one; the first ``images`` images of ``data``."""
    cases = []
    if task == "denoising-syn":
        for _, case, name, clean, noisy in synthetic_test_pairs("iid", {data.name: data}):
            if sum(c[0] == f"sigma{IID_SIGMAS[case - 1]}" for c in cases) < images:
                cases.append((f"sigma{IID_SIGMAS[case - 1]}", name, centre_crop(clean, max_side),
                              centre_crop(noisy, max_side), float(IID_SIGMAS[case - 1])))
        return cases
    for i, path in enumerate(list_images(data)[:images]):
        clean = centre_crop(read_image_uint8(path), max_side, even=True)
        noisy, std = camera_noise_with_std(clean, np.random.default_rng([CAMERA_SEED, i]))
        cases.append(("camera", path.stem, clean, noisy, std.mean(axis=2)))
    return cases


def strip(tiles: Sequence[tuple[str, np.ndarray]], path: Path) -> None:
    """A PNG of labelled ``STRIP_TILE``-pixel tiles side by side (H x W x 3 float images in [0, 1])."""
    label_h, row = 18, []
    for label, im in tiles:
        im = to_uint8(centre_crop(im, STRIP_TILE))
        tile = np.full((im.shape[0] + label_h, im.shape[1], 3), 255, np.uint8)
        tile[label_h:] = im
        cv2.putText(tile, label, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        row.append(tile)
    picture = np.concatenate(row, axis=1)[:, :, ::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: cv2.imwrite(str(tmp), picture, [cv2.IMWRITE_PNG_COMPRESSION, 9]))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the sweep for each task of --tasks; returns {task: JSON record}, each also written."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "testsets" / "CBSD68",
                        help="folder of clean test images (default ../shared/testsets/CBSD68)")
    parser.add_argument("--tasks", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--images", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--max_side", type=int, default=0, help="centre crop of at most this side (0: whole images)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--strip", type=Path, default=None,
                        help="also write a PNG strip of the first image's crop over K (the synthetic denoiser, "
                             "std 25)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results stem (default bench/results/strength_<task>_<device class>); with several tasks, "
                             "the task is appended")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if 1.0 not in args.strengths:
        parser.error("--strengths must include 1 (the blind default the others are compared with)")
    images = args.images or len(list_images(args.data))
    records = {}
    for task in args.tasks:
        net = load_model(task, str(MODELS[task]), MODELS[task], torch.device("cpu"))
        restorers = {k: Restorer(net, noise=NoiseControl(k)) for k in args.strengths}
        rows, started, strip_tiles = [], time.perf_counter(), []
        for case, name, clean, noisy, std in test_cases(task, args.data, images, args.max_side):
            controls = [(f"K={k:g}", restorers[k]) for k in args.strengths]
            given = NoiseControl(1.0, std if np.ndim(std) == 0 else std.astype(np.float32), "true std")
            controls.append(("true map", Restorer(net, noise=given)))
            outputs = {}
            for label, restorer in controls:
                outputs[label] = restorer(noisy).image
                rows.append({"case": case, "image": name, "control": label,
                             "psnr": calculate_psnr(outputs[label], clean), "tv": total_variation(outputs[label])})
            rows.append({"case": case, "image": name, "control": "clean", "psnr": float("inf"),
                         "tv": total_variation(clean / 255.0)})
            if args.strip and case == "sigma25" and not strip_tiles:
                strip_tiles = [("noisy", noisy), *((label, outputs[label]) for label, _ in controls[:-1]),
                               ("clean", clean / 255.0)]
                strip(strip_tiles, args.strip)
        seconds = time.perf_counter() - started
        cases = list(dict.fromkeys(r["case"] for r in rows))
        labels = [f"K={k:g}" for k in args.strengths] + ["true map", "clean"]
        means = {c: {lab: {m: float(np.mean([r[m] for r in rows if r["case"] == c and r["control"] == lab]))
                           for m in ("psnr", "tv")} for lab in labels} for c in cases}
        table = markdown_table(
            ["noise"] + labels[:-1] + ["true map - K=1", "clean TV"],
            [[c] + [f"{means[c][lab]['psnr']:.2f} / {means[c][lab]['tv']:.2f}" for lab in labels[:-2]]
             + [f"{means[c]['true map']['psnr']:.2f}", f"{means[c]['true map']['psnr'] - means[c]['K=1']['psnr']:+.3f}",
                f"{means[c]['clean']['tv']:.2f}"] for c in cases])
        out = args.out or common.result_path(task, "strength", common.device_class(torch.device("cpu")), suffix="")
        if args.out and len(args.tasks) > 1:
            out = out.with_name(f"{out.name}_{task}")
        record = {"benchmark": "strength", "task": task, "command": common.command_line(),
                  "machine": common.machine_info(torch.device("cpu")), "versions": common.versions(),
                  "checkpoint": str(MODELS[task]), "data": str(args.data), "images": images,
                  "max_side": args.max_side, "strengths": args.strengths, "seconds": seconds,
                  "cells": "PSNR / total variation (0-255 units); 'true map': PSNR with the true std given",
                  "mean": means, "per_image": rows}
        write_results(out, rows, record, table, f"{task}: {args.data.name} ({images} images, crops of at most "
                      f"{args.max_side or 'any'} px), PSNR / TV over K ({seconds:.0f} s)")
        records[task] = record
    return records


if __name__ == "__main__":
    run_main(main)
