"""The demos' run, written once: output names and the no-overwrite check, loading the model from
the common flags, the image loop (progress bar, per-image notes, skipping unusable images with one
line each, the count and summary), the test protocols' scoring and the results tables."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from utils.devices import device_name
from utils.image_io import ImageReadError, read_image, write_image
from utils.metrics import calculate_psnr, calculate_ssim

from .cli import check_no_overwrite, input_files, prepare_output_dir, restorer_from_args
from .pictures import noise_heatmap, side_by_side
from .restorer import InputImageError, Restored, Restorer
from .tables import grouped_means, mean_rows, markdown_table, score_table, write_results

SSIM_MIN_SIDE = 11
QUICK_LOOK_TAILS = ("", "_noise_std", "_noisy", "_compare")
"""Output files per image of a quick look: NAME<tail>.png."""


@dataclass(frozen=True)
class Source:
    """One input image: its output stem, its file (None for a built-in sample) and a loader
    returning it as an H x W x 3 array."""
    stem: str
    path: Optional[Path]
    load: Callable[[], np.ndarray]

    @property
    def name(self) -> str:
        """How messages name the image: its file name, else its stem."""
        return self.path.name if self.path else self.stem


def file_sources(in_path: os.PathLike, reader: Callable[[Path], np.ndarray] = read_image) -> list[Source]:
    """The images that ``-i`` names (``cli.input_files``), each read by ``reader`` when loaded."""
    return [Source(p.stem, p, partial(reader, p)) for p in input_files(in_path)]


def image_file_notes(path: os.PathLike) -> list[str]:
    """What the reading policy (``utils.image_io``) changes in this file, as short phrases:
    grayscale replicated to RGB, alpha channel dropped, 16-bit samples. Empty for 8-bit RGB or when
    the file cannot be decoded (reading it then raises the real error)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        return []
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    notes = []
    if channels in (1, 2):
        notes.append("grayscale, replicated to 3 channels")
    if channels in (2, 4):
        notes.append("alpha channel dropped")
    if raw.dtype == np.uint16:
        notes.append("16-bit samples scaled to [0, 1]; outputs are 8-bit")
    return notes


def progress(items: Iterable, total: Optional[int] = None, desc: str = "images", unit: str = "img") -> tqdm:
    """A progress bar over ``items`` on stderr (hidden when stderr is not a terminal)."""
    return tqdm(items, total=total, desc=desc, unit=unit, disable=None)


class Runner:
    """A demo's run: its output folder (created and checked), the ``suffix`` ('_PREFIX' or '')
    every output name carries, and, once ``load`` ed, its ``Restorer``."""

    def __init__(self, out_path: os.PathLike, suffix: str = ""):
        self.out_dir, self.suffix = prepare_output_dir(out_path), suffix
        self.restorer: Optional[Restorer] = None

    def file(self, stem: str, tail: str = "", ext: str = "png") -> Path:
        """The output file ``<out_dir>/<stem><suffix><tail>.<ext>``."""
        return self.out_dir / f"{stem}{self.suffix}{tail}.{ext}"

    def check(self, stems: Sequence[str], tails: Sequence[str], tables: Sequence[str] = (),
              inputs: Sequence[os.PathLike] = ()) -> None:
        """Refuse (UserError) to start when a planned output (``file(stem, tail)`` for every stem and
        tail, ``<table>.{csv,json,md}``) would overwrite one of ``inputs`` or another output."""
        planned = [self.file(stem, tail) for stem in stems for tail in tails]
        planned += [self.file(table, ext=ext) for table in tables for ext in ("csv", "json", "md")]
        check_no_overwrite(planned, inputs)

    def load(self, args: argparse.Namespace, task: str, default_ckpt: os.PathLike, sf: Optional[int] = None,
             flip: bool = False) -> Restorer:
        """Load the model from the common flags (``cli.restorer_from_args``); returns the Restorer."""
        self.restorer = restorer_from_args(args, task, default_ckpt, sf, flip)
        return self.restorer

    def run_info(self, ckpt: str) -> dict:
        """How the run restored, for its results record: the weights, flip, device, precision and the
        model seconds per megapixel so far."""
        restorer = self.restorer
        return {"checkpoint": ckpt, "flip": restorer.flip, "device": device_name(restorer.device),
                "precision": restorer.precision, "seconds_per_megapixel": restorer.seconds_per_megapixel}

    def results(self, name: str, rows: Sequence[dict], record: object, table: str,
                title: Optional[str] = None) -> None:
        """Write ``<name><suffix>.{csv,json,md}`` and print them (``tables.write_results``)."""
        write_results(self.out_dir / f"{name}{self.suffix}", rows, record, table, title)

    def restore(self, source: Source, im: np.ndarray) -> Restored:
        """Print one line of notes on ``source`` (what the reading policy changed, tiling), then
        restore ``im`` (H x W x 3 float32, the model input made from it)."""
        notes = image_file_notes(source.path) if source.path else []
        height, width = im.shape[:2]
        if self.restorer.will_tile(height, width):
            notes.append(f"{width} x {height}, restored in {self.restorer.tile} px tiles "
                         f"(overlap {self.restorer.overlap})")
        if notes:
            tqdm.write(f"note: {source.name}: {'; '.join(notes)}", file=sys.stderr)
        return self.restorer(im)

    def quick_look(self, source: Source, clean: np.ndarray, label: str,
                   add_noise: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> dict:
        """Score a restoration on known noise: ``add_noise(clean)`` (``clean`` H x W x 3 uint8) returns
        the noisy model input (H x W x 3 float32) and the true noise std (H x W x c, 0-255 units);
        writes NAME.png, NAME_noise_std.png (estimated beside true), NAME_noisy.png and NAME_compare.png
        (noisy | restored | clean). Returns the row: image, noise ``label``, PSNR / SSIM of the noisy
        input and of the restoration against ``clean``. Raises InputImageError for images too small
        for SSIM (before any noise is drawn)."""
        height, width = clean.shape[:2]
        if min(height, width) < SSIM_MIN_SIDE:
            raise InputImageError(f"image too small for the quick look's SSIM: {width} x {height} "
                                  f"(min {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE})")
        noisy, true_std_255 = add_noise(clean)
        result = self.restore(source, noisy)
        write_image(self.file(source.stem), result.image)
        noise_heatmap(self.file(source.stem, "_noise_std"), result.noise_std_255, true_std_255)
        write_image(self.file(source.stem, "_noisy"), noisy)
        side_by_side(self.file(source.stem, "_compare"), [noisy, result.image, clean], ["noisy", "restored", "clean"])
        return {"image": source.stem, "noise": label,
                "psnr_noisy": calculate_psnr(noisy, clean), "ssim_noisy": calculate_ssim(noisy, clean),
                "psnr": calculate_psnr(result.image, clean), "ssim": calculate_ssim(result.image, clean)}

    def quick_look_table(self, rows: list[dict]) -> None:
        """Write the ``quick_look`` rows as quicklook.{csv,json,md} and print the markdown table."""
        self.results("quicklook", rows, rows, markdown_table(
            ["image", "noise", "PSNR noisy", "PSNR", "SSIM noisy", "SSIM"],
            [[r["image"], r["noise"], f"{r['psnr_noisy']:.2f}", f"{r['psnr']:.2f}", f"{r['ssim_noisy']:.4f}",
              f"{r['ssim']:.4f}"] for r in rows]))

    def images(self, sources: Sequence[Source], process: Callable[[Source], Optional[dict]],
               verb: str = "restored", detail: str = "",
               tabulate: Optional[Callable[[list[dict]], None]] = None) -> int:
        """Run ``process(source)`` (load, ``restore``, write the outputs; returns a table row or None)
        on every source; an unreadable or unusable image (``ImageReadError``, ``InputImageError``) is
        skipped with one line on stderr. Then ``tabulate(rows)`` when there are rows, and the summary
        '<verb> N of M image(s)<detail>[, skipped K]; results in DIR'. Returns the exit status: 0
        when at least one image was done, else 1."""
        rows, skipped = [], 0
        for source in progress(sources):
            try:
                row = process(source)
            except (ImageReadError, InputImageError) as err:
                skipped += 1
                tqdm.write(f"skipped {source.name}: {err}", file=sys.stderr)
                continue
            if row is not None:
                rows.append(row)
        if rows and tabulate is not None:
            tabulate(rows)
        done = len(sources) - skipped
        print(f"{verb} {done} of {len(sources)} image(s){detail}" + (f", skipped {skipped}" if skipped else "")
              + f"; results in {self.out_dir}")
        return 0 if done else 1

    def evaluate(self, cases: Iterable[tuple[dict, np.ndarray, np.ndarray, np.ndarray]], total: Optional[int],
                 desc: str, baseline: str, border: int = 0, ycbcr: bool = False) -> list[dict]:
        """Score a test protocol: each case is (labels, clean uint8 H x W x 3, model input, baseline
        image); the restoration and the baseline (e.g. the noisy input, bicubic up-sampling) get PSNR
        and SSIM (``utils.metrics``, ``border``, on Y with ``ycbcr``). Returns one row per case:
        the labels, then psnr, ssim, psnr_<baseline>, ssim_<baseline> (with '_y' after the metric on Y)."""
        y = "_y" if ycbcr else ""
        rows = []
        for labels, clean, im, base in progress(cases, total, desc):
            scores = {}
            for tail, out in (("", self.restorer(im).image), (f"_{baseline}", base)):
                scores[f"psnr{y}{tail}"] = calculate_psnr(out, clean, border, ycbcr=ycbcr)
                scores[f"ssim{y}{tail}"] = calculate_ssim(out, clean, border, ycbcr=ycbcr)
            rows.append({**labels, **scores})
        return rows

    def protocol_results(self, name: str, rows: list[dict], column: str, header: Sequence[str],
                         methods: Sequence[tuple[str, str, str]], record: dict, title: str,
                         mean_column: bool = False) -> None:
        """Write a protocol's ``name.{csv,json,md}`` and print its table: the ``evaluate`` rows and their
        means per dataset and ``column`` (with ``mean_column``, also the mean of a dataset's column
        means, the reference's SR score), ``record`` followed by 'mean' and 'images' as the JSON,
        ``tables.score_table(means, header, methods)``, and ``title`` above it."""
        metrics = [m for _, psnr, ssim in methods for m in (psnr, ssim)]
        means = grouped_means(rows, ("dataset", column), metrics)
        if mean_column:
            for groups in means.values():
                groups["mean"] = {m: float(np.mean([v[m] for v in groups.values()])) for m in metrics}
        self.results(name, rows + mean_rows(means, column), {**record, "mean": means, "images": rows},
                     score_table(means, header, methods), title)
