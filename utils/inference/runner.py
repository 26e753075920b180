"""The demos' run, written once: output names and the no-overwrite check, loading the model from
the common flags, the image loop (progress bar, per-image notes, skipping unusable images with one
line each, the count and summary), restored files written as their inputs were stored
(``restore_file``), the test protocols' scoring (LPIPS, --save_images, the model's size) and the
results tables."""
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
from torch import nn
from tqdm import tqdm

from utils.devices import device_name
from utils import errors, outputs
from utils.errors import UserError
from utils.image_io import ImageInfo, ImageReadError, read_image, read_image_with_info, write_image, write_image_like
from utils.metrics import calculate_psnr, calculate_ssim
from utils.outputs import inside

from .cli import check_no_overwrite, input_files, prepare_output_dir, restorer_from_args
from .complexity import complexity_line, model_complexity
from .perceptual import lpips_scorer
from .pictures import noise_heatmap, side_by_side
from .restorer import InputImageError, NonFiniteOutputError, Restored, Restorer
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


def carried_notes(info: ImageInfo, bit_depth: Optional[int] = None) -> list[str]:
    """What the restoration of a file keeps of it (``write_image_like``), as short phrases: the EXIF
    orientation applied, grayscale, alpha, a bit depth other than 8 (``bit_depth``: the output's,
    None: the input's). Empty for an upright 8-bit RGB file."""
    notes = [f"EXIF orientation {info.orientation} applied, written upright"] if info.orientation != 1 else []
    if info.gray:
        notes.append("grayscale, written as grayscale" if info.alpha is None else "gray + alpha, written as RGBA")
    if info.alpha is not None:
        notes.append("alpha channel kept")
    depth = bit_depth or info.bit_depth
    if 16 in (depth, info.bit_depth):
        notes.append(f"{info.bit_depth}-bit, written as {depth}-bit")
    return notes


def progress(items: Iterable, total: Optional[int] = None, desc: str = "images", unit: str = "img") -> tqdm:
    """A progress bar over ``items`` on stderr (hidden when stderr is not a terminal)."""
    return tqdm(items, total=total, desc=desc, unit=unit, disable=None)


class Runner:
    """A demo's run: its output folder (created and checked), the ``suffix`` ('_PREFIX' or '')
    every output name carries, and, once ``load`` ed, its ``Restorer``. A suffix that could lead
    outside the folder (a path separator, '..') is refused (UserError) before anything is created.
    ``overwrite`` (--overwrite): replace existing files the project did not write (``utils.outputs``).
    The folder receives the traceback of an unexpected error (``utils.errors.set_log_folder``)."""

    def __init__(self, out_path: os.PathLike, suffix: str = "", overwrite: bool = False):
        if any(part in suffix for part in ("/", "\\", "\0", "..")):
            raise UserError(f"--prefix {suffix[1:]!r}: a prefix becomes part of file names and must not hold "
                            f"'/', '\\' or '..'; use -o to choose the folder")
        self.out_dir, self.suffix, self.overwrite = prepare_output_dir(out_path), suffix, overwrite
        errors.set_log_folder(self.out_dir)
        self.planned: list[Path] = []  # checked outputs, recorded as the project's once written (record_outputs)
        self.planned_folders: list[Path] = []  # checked output folders written whole (check_folder)
        self.restorer: Optional[Restorer] = None
        self.bit_depth: Optional[int] = None  # of images written from files; None: as the input (--bit_depth)
        self.save_images = False  # protocols also write their restorations (--save_images)
        self._lpips: Optional[tuple] = None  # (scorer or None, why not), once asked for

    def file(self, stem: str, tail: str = "", ext: str = "png") -> Path:
        """The output file ``<out_dir>/<stem><suffix><tail>.<ext>``."""
        return inside(self.out_dir, f"{stem}{self.suffix}{tail}.{ext}")

    def check(self, stems: Sequence[str], tails: Sequence[str], tables: Sequence[str] = (),
              inputs: Sequence[os.PathLike] = ()) -> None:
        """Refuse (UserError) to start when a planned output (``file(stem, tail)`` for every stem and
        tail, ``<table>.{csv,json,md}``) would overwrite one of ``inputs`` or another output, or an
        existing file the project did not write (without ``overwrite``: ``cli.check_no_overwrite``)."""
        planned = [self.file(stem, tail) for stem in stems for tail in tails]
        planned += [self.file(table, ext=ext) for table in tables for ext in ("csv", "json", "md")]
        self.check_files(planned, inputs)

    def check_files(self, planned: Sequence[os.PathLike], inputs: Sequence[os.PathLike] = ()) -> None:
        """``check`` for the output files ``planned`` (paths in the output folder), which
        ``record_outputs`` then records as the project's once they are written."""
        errors.set_step("checking the outputs")
        check_no_overwrite(planned, inputs, self.out_dir, self.overwrite)
        self.planned += map(Path, planned)

    def check_folder(self, name: str) -> Path:
        """The subfolder ``name`` of the output folder, which a mode fills whole (DND's boxes): refused
        (UserError) when it exists and the project did not write it, unless ``overwrite``; recorded by
        ``record_outputs``."""
        path = inside(self.out_dir, name)
        errors.set_step("checking the outputs")
        check_no_overwrite([path], (), self.out_dir, self.overwrite)
        self.planned_folders.append(path)
        return path

    def record_outputs(self) -> None:
        """Record the checked outputs written so far as the project's (``utils.outputs.record``), so that
        a later run may replace them."""
        outputs.record(self.out_dir, self.planned, self.planned_folders)

    def load(self, args: argparse.Namespace, task: str, default_ckpt: os.PathLike, sf: Optional[int] = None,
             flip: bool = False, protocol: bool = False) -> Restorer:
        """Load the model from the common flags (``cli.restorer_from_args``; without --precision, a
        ``protocol`` runs fp32 for the exact numbers, other modes 'auto') and take the output flags
        (--bit_depth, --save_images); returns the Restorer."""
        errors.set_step("loading the model")
        self.restorer = restorer_from_args(args, task, default_ckpt, sf, flip, "fp32" if protocol else "auto")
        depth = getattr(args, "bit_depth", "auto")
        self.bit_depth, self.save_images = None if depth == "auto" else int(depth), getattr(args, "save_images", False)
        return self.restorer

    def run_info(self, ckpt: str) -> dict:
        """How the run restored, for its results record: the weights, flip, device, precision, the
        model seconds per megapixel so far and ``model_info``."""
        restorer = self.restorer
        return {"checkpoint": ckpt, "flip": restorer.flip, "device": device_name(restorer.device),
                "precision": restorer.precision, "seconds_per_megapixel": restorer.seconds_per_megapixel,
                **self.model_info()}

    def model_info(self) -> dict:
        """{'model': parameters and FLOPs at 256 x 256 (``complexity.model_complexity``; a PyTorch model
        only, not an ONNX file)}, and the strength control (``NoiseControl.record``) of a denoiser demo."""
        net, noise = self.restorer.net, self.restorer.noise
        model = {"model": model_complexity(net, self.restorer.sf)} if isinstance(net, nn.Module) else {}
        return {**model, **(noise.record() if noise else {})}

    def results(self, name: str, rows: Sequence[dict], record: object, table: str,
                title: Optional[str] = None) -> None:
        """Write ``<name><suffix>.{csv,json,md}`` and print them (``tables.write_results``); a record with a
        'model' entry (``model_info``) adds its ``complexity_line`` under the table."""
        if isinstance(record, dict) and "model" in record:
            table += "\n" + complexity_line(record["model"]) + "\n"
        write_results(self.out_dir / f"{name}{self.suffix}", rows, record, table, title)
        self.record_outputs()

    def restore(self, source: Source, im: np.ndarray, notes: Optional[list[str]] = None) -> Restored:
        """Print one line of notes on ``source`` (``notes``, by default what the reading policy changed;
        tiling), then restore ``im`` (H x W x 3 float32, the model input made from it)."""
        if notes is None:
            notes = image_file_notes(source.path) if source.path else []
        height, width = im.shape[:2]
        if self.restorer.will_tile(height, width):
            notes.append(f"{width} x {height}, restored in {self.restorer.tile} px tiles "
                         f"(overlap {self.restorer.overlap})")
        if notes:
            tqdm.write(f"note: {source.name}: {'; '.join(notes)}", file=sys.stderr)
        return self.restorer(im, source.name)

    def restore_file(self, source: Source, check: Optional[Callable[[np.ndarray], None]] = None) -> Restored:
        """Read the file of ``source`` with its ``ImageInfo``, ``check(image)`` it when given (raising
        InputImageError), restore it (notes: what is carried over, tiling) and write NAME.png the way the
        input was stored (``write_image_like``: upright, grayscale, alpha, ICC profile, EXIF, and the bit
        depth of --bit_depth). Returns the restoration."""
        im, info = read_image_with_info(source.path)
        if check is not None:
            check(im)
        result = self.restore(source, im, carried_notes(info, self.bit_depth))
        write_image_like(self.file(source.stem), result.image, info, self.bit_depth)
        return result

    def noise_picture(self, stem: str, result: Restored, true_std_255: Optional[np.ndarray] = None,
                      detail: str = "") -> None:
        """Write NAME_noise_std.png, the heat map of the noise std map the R-Net got (the S-Net's
        estimate, or the map of the strength control), beside ``true_std_255`` when given; ``detail``
        ends its title."""
        noise_heatmap(self.file(stem, "_noise_std"), result.noise_std_255, true_std_255,
                      title=self.restorer.noise_label + detail)

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
        self.noise_picture(source.stem, result, true_std_255)
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
        skipped with one line on stderr, an image whose restoration is not finite
        (``NonFiniteOutputError``: nothing written for it) fails with one line, and the others go
        on. Then ``tabulate(rows)`` when there are rows, and the summary '<verb> N of M
        image(s)<detail>[, skipped K][, failed F]; results in DIR'. Returns the exit status: 0 when
        at least one image was done and none failed, else 1."""
        rows, skipped, failed = [], 0, 0
        try:
            for source in progress(sources):
                errors.set_step(f"restoring {source.name}")
                try:
                    row = process(source)
                except (ImageReadError, InputImageError) as err:
                    skipped += 1
                    tqdm.write(f"skipped {source.name}: {err}", file=sys.stderr)
                    continue
                except NonFiniteOutputError as err:
                    failed += 1
                    tqdm.write(f"error: {err}", file=sys.stderr)
                    continue
                if row is not None:
                    rows.append(row)
            if rows and tabulate is not None:
                tabulate(rows)
        finally:
            self.record_outputs()
        done = len(sources) - skipped - failed
        print(f"{verb} {done} of {len(sources)} image(s){detail}" + (f", skipped {skipped}" if skipped else "")
              + (f", failed {failed}" if failed else "") + f"; results in {self.out_dir}")
        return 0 if done and not failed else 1

    def evaluate(self, cases: Iterable[tuple[dict, np.ndarray, np.ndarray, np.ndarray]], total: Optional[int],
                 desc: str, baseline: str, border: int = 0, ycbcr: bool = False, name: str = "",
                 perceptual: bool = False) -> list[dict]:
        """Score a test protocol: each case is (labels, clean uint8 H x W x 3, model input, baseline
        image); the restoration and the baseline (e.g. the noisy input, bicubic up-sampling) get PSNR
        and SSIM (``utils.metrics``, ``border``, on Y with ``ycbcr``) and, with ``perceptual``, LPIPS
        when it is available (``perceptual.lpips_scorer``; else one note). Returns one row per case:
        the labels, then psnr, ssim, psnr_<baseline>, ssim_<baseline> (with '_y' after the metric on Y)
        [, lpips, lpips_<baseline>] [, var1, var2, rho: the K-Net's kernel estimate, SR models]. With
        --save_images and the protocol's results ``name`` the restorations are written too
        (``saved_image``)."""
        y = "_y" if ycbcr else ""
        lpips = self._lpips_scorer() if perceptual else None
        rows = []
        for labels, clean, im, base in progress(cases, total, desc):
            errors.set_step(f"scoring {'/'.join(str(value) for value in labels.values())}")
            scores = {}
            result = self.restorer(im, "/".join(str(value) for value in labels.values()))
            restored = result.image
            if self.save_images and name:
                write_image(self.saved_image(name, labels), restored)
            for tail, out in (("", restored), (f"_{baseline}", base)):
                scores[f"psnr{y}{tail}"] = calculate_psnr(out, clean, border, ycbcr=ycbcr)
                scores[f"ssim{y}{tail}"] = calculate_ssim(out, clean, border, ycbcr=ycbcr)
                if lpips is not None:
                    scores[f"lpips{tail}"] = lpips(out, clean)
            if result.kinfo is not None:
                from utils.degradation import KINFO_NAMES  # scipy.ndimage: loaded by SR protocols only

                scores.update(zip(KINFO_NAMES, (float(v) for v in result.kinfo)))
            rows.append({**labels, **scores})
        return rows

    def saved_image(self, name: str, labels: dict) -> Path:
        """Where --save_images writes a restoration of the protocol ``name``: ``<out>/<name><suffix>_images/``,
        one folder per label but the image (a number v of label k as 'kv', e.g. kernel1), ``<image>.png``.
        The folder ``<name><suffix>_images`` is recorded as the project's (``utils.outputs.record``); an
        existing file in it that the project did not write is refused (UserError) unless ``overwrite``;
        a label that would lead outside the output folder is refused too."""
        folders = [f"{key}{value}" if str(value).isdigit() else str(value) for key, value in labels.items()
                   if key != "image"]
        top = inside(self.out_dir, f"{name}{self.suffix}_images")
        path = inside(top, *folders, f"{labels['image']}.png", what="restored image")
        check_no_overwrite([path], (), self.out_dir, self.overwrite)
        if not top.exists():
            top.mkdir()
            outputs.record(self.out_dir, subfolders=[top])
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _lpips_scorer(self):
        """The LPIPS scorer, made once; None (with one note on stderr) when it is not available."""
        if self._lpips is None:
            self._lpips = lpips_scorer(self.restorer.device)
            if self._lpips[0] is None:
                tqdm.write(f"note: LPIPS left out: {self._lpips[1]}", file=sys.stderr)
        return self._lpips[0]

    def protocol_results(self, name: str, rows: list[dict], column: str, header: Sequence[str],
                         methods: Sequence[tuple[str, ...]], record: dict, title: str,
                         mean_column: bool = False) -> None:
        """Write a protocol's ``name.{csv,json,md}`` and print its table: the ``evaluate`` rows and their
        means per dataset and ``column`` (with ``mean_column``, also the mean of a dataset's column
        means, the reference's SR score), ``record`` with ``model_info`` followed by 'mean' and 'images'
        as the JSON, ``tables.score_table(means, header, methods)`` (the rows' LPIPS, when scored, added
        to the methods' cells) and the model's ``complexity_line``, and ``title`` above it."""
        lpips = [m for m in (rows[0] if rows else {}) if m.startswith("lpips")]  # the restoration's, the baseline's
        if lpips:
            methods = [(*method, *lpips[k:k + 1]) for k, method in enumerate(methods)]
        metrics = [m for _, *scores in methods for m in scores]
        means = grouped_means(rows, ("dataset", column), metrics)
        if mean_column:
            for groups in means.values():
                groups["mean"] = {m: float(np.mean([v[m] for v in groups.values()])) for m in metrics}
        record = {**record, **self.model_info(), "mean": means, "images": rows}
        table = score_table(means, header, methods)
        table += "\nLPIPS (AlexNet, RGB, whole image) follows PSNR / SSIM in every cell\n" if lpips else ""
        self.results(name, rows + mean_rows(means, column), record, table, title)
