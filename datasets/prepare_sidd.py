"""Cut the SIDD-Medium sRGB training pairs into random patch pairs (run once before training).

    python -m datasets.prepare_sidd --sidd_dir DIR [--out_dir DIR] --pch_size 256 \
        --per_num_pch 400 --seed 10000 [--workers N]

Inputs: every ``*NOISY*.png`` file below ``--sidd_dir`` (recursive, extension in any case, hidden
files and folders skipped), sorted by path string; the clean partner of each is the file of the
same folder whose name has ``NOISY`` replaced by ``GT``. Image ``i`` (1-based, in that order) gives
``per_num_pch`` pairs cropped at the same uniformly random top-left corner in both images, written
losslessly as ``<out>/noisy/sidd_{i:04d}_{k:04d}.png`` and ``<out>/gt/sidd_{i:04d}_{k:04d}.png``
(k = 1..per_num_pch); the default ``<out>`` is ``<sidd_dir>/patchs<pch_size>``.

Differences from the reference script (``im2patch_train.py``), on purpose:

- Reproducible positions. The reference seeds Python's ``random`` in the parent process only, so
  its joblib workers crop at unseeded positions. Here image ``i`` draws its corners from its own
  generator ``np.random.default_rng([seed, i])`` (row then column, patch after patch), so the
  output depends only on the inputs and the arguments, not on the number of workers.
- Resumable and atomic. Every file is written to a temporary name and renamed; temporaries left
  by a killed run are deleted at the start of the next. An image whose patches all exist is
  skipped; an interrupted image is cropped again (same positions). One run at a time per output
  folder (``utils.locking.folder_lock``; a second one stops with one line).
- The settings and the image list are kept in ``<out>/prepare_sidd.json`` (a folder holding patches
  but no such record is refused). A re-run with other
  settings or images takes the folder over as long as every patch already in it stays valid
  (each image number with patches keeps its settings and its source image): a run that failed
  on image i can be corrected by replacing image i, removing it (when no later image was
  written) or, if no patch was written, changing any setting. Otherwise it is refused.
- A bad input image (unreadable, truncated, corrupt, smaller than the patch, sized unlike its
  clean partner) stops the run with one line naming it: every image of the list is needed, and
  its number fixes its patch names. A full disk or an unwritable folder stops it with one line
  naming the file or folder, Ctrl-C with a note to run the same command again (exit 130); none
  leaves a partial file behind.
- The unused ``--stride`` option of the reference is not offered.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from utils import errors
from utils.errors import UserError, report_errors
from utils.image_io import (ImageReadError, atomic_write, read_image_uint8,
                            remove_stale_temporaries, write_image)
from utils.locking import folder_lock

MANIFEST = "prepare_sidd.json"
SETTINGS = ("pch_size", "per_num_pch", "seed")
SUBFOLDERS = ("noisy", "gt")
_PATCH = re.compile(r"sidd_(\d+)_\d+\.png")


class PrepareError(UserError):
    """A problem with the inputs or the output folder; the message is one line for the user."""


def find_pairs(sidd_dir: Path) -> list[tuple[Path, Path]]:
    """The (noisy, gt) image paths below ``sidd_dir``, sorted by the noisy path string.

    Raises ``PrepareError`` when the folder is missing, holds no noisy image or a noisy image
    has no clean partner.
    """
    if not sidd_dir.is_dir():
        raise PrepareError(f"{sidd_dir}: no such SIDD folder")
    noisy = sorted((p for p in sidd_dir.rglob("*")
                    if "NOISY" in p.stem and p.suffix.lower() == ".png" and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(sidd_dir).parts)),
                   key=str)
    if not noisy:
        raise PrepareError(f"{sidd_dir}: no *NOISY*.PNG images found (searched recursively)")
    pairs = [(p, p.with_name(p.name.replace("NOISY", "GT"))) for p in noisy]
    for p, gt in pairs:
        if not gt.is_file():
            raise PrepareError(f"{p}: clean partner {gt} not found")
    return pairs


def patch_name(img: int, k: int) -> str:
    """File name of patch ``k`` (1-based) of image ``img`` (1-based)."""
    return f"sidd_{img:04d}_{k:04d}.png"


def patch_corners(seed: int, img: int, h: int, w: int, pch_size: int, num: int) -> np.ndarray:
    """Top-left corners of the ``num`` patches of image ``img`` (1-based) of size h x w.

    Returns a num x 2 int64 array of (row, col), rows uniform in [0, h - pch_size] and columns
    in [0, w - pch_size], drawn from ``np.random.default_rng([seed, img])``.
    """
    rng = np.random.default_rng([seed, img])
    corners = np.empty((num, 2), dtype=np.int64)
    for k in range(num):
        corners[k, 0] = rng.integers(0, h - pch_size + 1)
        corners[k, 1] = rng.integers(0, w - pch_size + 1)
    return corners


def _patches_on_disk(out_dir: Path) -> dict[str, set[str]]:
    """Names of the patch files in each subfolder of ``out_dir``."""
    return {sub: {p.name for p in (out_dir / sub).iterdir() if _PATCH.fullmatch(p.name)}
            for sub in SUBFOLDERS}


def _is_done(on_disk: dict[str, set[str]], img: int, num: int) -> bool:
    """Whether every noisy and clean patch of image ``img`` exists."""
    return all(patch_name(img, k) in on_disk[sub] for sub in SUBFOLDERS for k in range(1, num + 1))


def crop_image(noisy_path: Path, gt_path: Path, img: int, out_dir: Path, pch_size: int,
               num: int, seed: int) -> int:
    """Crop and write the ``num`` patch pairs of image ``img`` (1-based); returns ``img``.

    Raises ``PrepareError`` for an unreadable image, a noisy/clean size mismatch or an image
    smaller than the patch.
    """
    try:
        im_noisy = read_image_uint8(noisy_path)
        im_gt = read_image_uint8(gt_path)
    except ImageReadError as err:
        raise PrepareError(f"{err}; replace the file and run the same command again") from None
    if im_noisy.shape != im_gt.shape:
        raise PrepareError(f"{noisy_path}: size {im_noisy.shape[:2]} differs from its clean "
                           f"partner's {im_gt.shape[:2]}")
    h, w = im_noisy.shape[:2]
    if h < pch_size or w < pch_size:
        raise PrepareError(f"{noisy_path}: image {h}x{w} is smaller than the patch size {pch_size}")
    for k, (top, left) in enumerate(patch_corners(seed, img, h, w, pch_size, num), start=1):
        rows, cols = slice(top, top + pch_size), slice(left, left + pch_size)
        write_image(out_dir / "noisy" / patch_name(img, k), im_noisy[rows, cols])
        write_image(out_dir / "gt" / patch_name(img, k), im_gt[rows, cols])
    return img


def _source(manifest: dict, img: int) -> tuple:
    """What the patches of image number ``img`` are made from under ``manifest``: the settings
    and the source image (None past the end of the list)."""
    images = manifest.get("images")
    image = images[img - 1] if isinstance(images, list) and img <= len(images) else None
    return tuple(manifest.get(key) for key in SETTINGS) + (image,)


def _check_manifest(out_dir: Path, manifest: dict, on_disk: dict[str, set[str]]) -> None:
    """Record ``manifest`` (the settings and the image list) in the output folder.

    The manifest of an earlier run is replaced when every patch on disk stays valid: each image
    number with patches keeps its settings and source image. Raises ``PrepareError`` otherwise, and
    for a folder holding patches but no manifest (their settings unknown).
    """
    path = out_dir / MANIFEST
    if not path.is_file() and any(on_disk.values()):
        raise PrepareError(f"{out_dir}: holds patches but no {MANIFEST} recording their settings; choose another "
                           f"--out_dir, or delete those patches to make them again")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        if old == manifest:
            return
        old = old if isinstance(old, dict) else {}
        numbers = {int(_PATCH.fullmatch(name)[1]) for names in on_disk.values() for name in names}
        stale = sorted(i for i in numbers if _source(old, i) != _source(manifest, i))
        if stale:
            raise PrepareError(
                f"{out_dir}: holds patches of {len(stale)} image(s) made with other settings or "
                f"images (first sidd_{stale[0]:04d}_*.png, see {MANIFEST}); choose another "
                f"--out_dir, or delete those patches to make them again")
    text = json.dumps(manifest, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _run_parallel(jobs: list[tuple], workers: int) -> None:
    """Run ``crop_image`` over ``jobs`` in worker processes, with a progress bar.

    Workers are forked where the platform allows it (no re-import of the package in each), all
    at the first submit, before the progress bar starts its monitor thread. They ignore Ctrl-C:
    on an interrupt or an error the images not started are cancelled and the ones being cropped
    finish, so no worker dies in the middle of a write.
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=signal.signal,
                             initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        futures = [pool.submit(crop_image, *job) for job in jobs]
        try:
            for future in tqdm(as_completed(futures), total=len(jobs), unit="img",
                               desc="SIDD patches"):
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def prepare(sidd_dir: Path, out_dir: Optional[Path], pch_size: int, per_num_pch: int, seed: int,
            workers: int) -> Path:
    """Write the patch pairs of every SIDD image (see the module docstring), holding the lock of
    the output folder; returns the output folder. Raises ``PrepareError`` for bad inputs,
    ``FolderLockError`` for a busy or unwritable output folder, ``OSError`` naming the file for
    a failed write (a full disk)."""
    if pch_size < 1 or per_num_pch < 1 or workers < 1 or seed < 0:
        raise PrepareError("--pch_size, --per_num_pch and --workers must be positive, --seed >= 0")
    pairs = find_pairs(sidd_dir)
    out_dir = out_dir if out_dir is not None else sidd_dir / f"patchs{pch_size}"
    with folder_lock(out_dir, what="prepare_sidd run"):
        errors.set_log_folder(out_dir)
        for folder in (out_dir, *(out_dir / sub for sub in SUBFOLDERS)):
            folder.mkdir(exist_ok=True)
            if removed := remove_stale_temporaries(folder):
                print(f"removed {len(removed)} temporary file(s) of an interrupted run in {folder}")
        on_disk = _patches_on_disk(out_dir)
        _check_manifest(out_dir, {**dict(zip(SETTINGS, (pch_size, per_num_pch, seed))),
                                  "images": [str(p.relative_to(sidd_dir)) for p, _ in pairs]},
                        on_disk)
        todo = [img for img in range(1, len(pairs) + 1) if not _is_done(on_disk, img, per_num_pch)]
        print(f"{len(pairs)} SIDD images: {len(pairs) - len(todo)} already cropped, "
              f"{len(todo)} to crop into {out_dir}")
        jobs = [(*pairs[img - 1], img, out_dir, pch_size, per_num_pch, seed) for img in todo]
        errors.set_step("cropping patches")
        if workers == 1 or len(jobs) <= 1:
            for job in tqdm(jobs, unit="img", desc="SIDD patches"):
                crop_image(*job)
        else:
            _run_parallel(jobs, min(workers, len(jobs)))
    print(f"{len(pairs) * per_num_pch} patch pairs in {out_dir}")
    return out_dir


def _default_workers() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _command(argv: Optional[Sequence[str]]) -> int:
    """Parse ``argv`` and prepare; returns 0, or 130 after Ctrl-C (with a note on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m datasets.prepare_sidd",
        description="Crop SIDD-Medium sRGB pairs into training patches.")
    parser.add_argument("--sidd_dir", required=True, type=Path,
                        help="folder holding the SIDD-Medium sRGB scenes (searched recursively)")
    parser.add_argument("--out_dir", type=Path, default=None,
                        help="output folder (default: <sidd_dir>/patchs<pch_size>)")
    parser.add_argument("--pch_size", type=int, default=256, help="patch size (default 256)")
    parser.add_argument("--per_num_pch", type=int, default=400,
                        help="patches per image (default 400)")
    parser.add_argument("--seed", type=int, default=10000, help="random seed (default 10000)")
    parser.add_argument("--workers", type=int, default=_default_workers(),
                        help="parallel processes (default: all available CPUs)")
    args = parser.parse_args(argv)
    try:
        prepare(args.sidd_dir, args.out_dir, args.pch_size, args.per_num_pch, args.seed,
                args.workers)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command-line entry point. A problem the user can fix (bad input, busy or unwritable output
    folder, full disk) exits with status 1 and one line ``error: ...`` on stderr, Ctrl-C with
    status 130; returns normally on success."""
    status = report_errors(_command, argv)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
