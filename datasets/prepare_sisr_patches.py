"""Cut the SISR training HR images (DIV2K train HR, Flickr2K HR) into overlapping square patches.

Usage::

    python -m datasets.prepare_sisr_patches --in_dirs DIV2K_train_HR Flickr2K_HR \\
        --prefixes div2k flickr --out_dir pch512_hr --pch_size 512 --stride 320 [--workers N]

For an H x W image the patch corners are the row starts ``range(0, H - p, stride) + [H - p]``
crossed with the column starts built the same way from W (the last window lies flush with the
border). Patch n (1-based, row-major over the corners) of ``<in_dir>/<stem>.<ext>`` is written to
``<out_dir>/<prefix>_<stem>_<n:05d>.png`` with its pixels as stored (bit depth and channels kept,
PNG is lossless), each file atomically. Every image file of each folder is used.

Re-running is cheap: an image whose patches all exist is skipped (its size is read from the file
header, the pixels are not decoded), and only missing patches of a partly done image are written.
Images smaller than the patch in either dimension are skipped and counted; the reference has no
rule for them (its negative start index would cut a wrong-sized patch). Unreadable images
(missing, truncated, corrupt: ``utils.image_io.read_image_as_stored``'s checks) are skipped too,
none of their patches written: each is reported by name and they make the exit status 1 once
the others are done; replace them and run the same command again to cut them. A missing input
folder, a folder without images or two images that would share patch names stop the run with a
one-line message (exit status 2) before anything is written.

The settings (``--pch_size``, ``--stride``) are kept in ``<out_dir>/prepare_sisr_patches.json``; a
re-run with other settings into a folder holding patches is refused (one line naming the settings),
as is a folder holding patches but no record of their settings: patches of two sizes or grids never
mix. A prefix may not hold a path separator, '..' or start with '.'; no patch is written outside
``--out_dir``.

One run at a time per output folder (``utils.locking.folder_lock``); temporary files of a killed
run are deleted at the start of the next. A busy or unwritable output folder or a full disk stops
the run with one line naming the folder or file (exit status 1), Ctrl-C with a note to run the
same command again (exit status 130); workers finish the image they are cutting, so no partial
file is left behind.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from utils import errors
from utils.errors import UserError, report_errors
from utils.image_io import (ImageReadError, atomic_write, list_images, read_image_as_stored,
                            remove_stale_temporaries)
from utils.locking import folder_lock
from utils.outputs import inside

PROG = "prepare_sisr_patches"
SETTINGS_FILE = "prepare_sisr_patches.json"
SETTINGS = ("pch_size", "stride")
"""The arguments that decide the patches' names and contents, recorded in SETTINGS_FILE."""


class Job(NamedTuple):
    """One input image: its path and the prefix of its patch names."""
    path: Path
    prefix: str


class Outcome(NamedTuple):
    """What happened to one image: status is 'done', 'skipped', 'small' or 'failed'."""
    status: str
    written: int
    message: str = ""


def window_starts(size: int, pch_size: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of length ``size`` (>= ``pch_size``):
    ``range(0, size - pch_size, stride)`` followed by ``size - pch_size``."""
    return list(range(0, size - pch_size, stride)) + [size - pch_size]


def patch_names(prefix: str, stem: str, height: int, width: int, pch_size: int,
                stride: int) -> list[tuple[str, int, int]]:
    """``(file name, row, column)`` of every patch of an image, in row-major order (n from 1)."""
    corners = [(r, c) for r in window_starts(height, pch_size, stride)
               for c in window_starts(width, pch_size, stride)]
    return [(f"{prefix}_{stem}_{n:05d}.png", r, c) for n, (r, c) in enumerate(corners, start=1)]


def _header_size(path: Path) -> Optional[tuple[int, int]]:
    """(height, width) from the file header, or None if Pillow cannot parse it."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return height, width


def crop_image(job: Job, out_dir: Path, pch_size: int, stride: int) -> Outcome:
    """Write the missing patches of one image; a bad image gives a 'failed' outcome naming it.
    Raises ``OSError`` (naming the file) when a patch cannot be written."""
    size = _header_size(job.path)
    if size is not None:
        if min(size) < pch_size:
            return Outcome("small", 0)
        todo = patch_names(job.prefix, job.path.stem, *size, pch_size, stride)
        if all((out_dir / name).exists() for name, _, _ in todo):
            return Outcome("skipped", 0)
    try:
        im = read_image_as_stored(job.path)
    except ImageReadError as err:
        return Outcome("failed", 0, str(err))
    height, width = im.shape[:2]
    if min(height, width) < pch_size:
        return Outcome("small", 0)
    written = 0
    for name, row, col in patch_names(job.prefix, job.path.stem, height, width, pch_size, stride):
        target = inside(out_dir, name, what="patch")
        if target.exists():
            continue
        patch = np.ascontiguousarray(im[row:row + pch_size, col:col + pch_size])
        ok, buf = cv2.imencode(".png", patch)
        if not ok:
            return Outcome("failed", written, f"{job.path}: PNG encoding failed")
        atomic_write(target, lambda tmp: tmp.write_bytes(buf.tobytes()))
        written += 1
    return Outcome("done", written)


def collect_jobs(in_dirs: Sequence[Path], prefixes: Sequence[str]) -> list[Job]:
    """All images of the input folders with their prefixes; raises ``ValueError`` with a one-line
    message for a missing folder, a folder without images or clashing patch names."""
    jobs, owners = [], {}
    for folder, prefix in zip(in_dirs, prefixes):
        if not folder.is_dir():
            raise ValueError(f"input folder not found: {folder}")
        files = list_images(folder)
        if not files:
            raise ValueError(f"no image files in {folder}")
        for path in files:
            key = f"{prefix}_{path.stem}"
            if key in owners:
                raise ValueError(f"{owners[key]} and {path} would both write patches {key}_*.png")
            owners[key] = path
            jobs.append(Job(path, prefix))
    return jobs


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--in_dirs", nargs="+", type=Path, required=True,
                        help="folders of HR images (every image file is used)")
    parser.add_argument("--prefixes", nargs="+",
                        help="patch-name prefix per input folder (default: the folder names)")
    parser.add_argument("--out_dir", type=Path, required=True, help="folder for the patches")
    parser.add_argument("--pch_size", type=int, default=512, help="patch side (default 512)")
    parser.add_argument("--stride", type=int, default=320, help="window stride (default 320)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: all CPUs)")
    args = parser.parse_args(argv)
    if args.prefixes is None:
        args.prefixes = [d.name for d in args.in_dirs]
    if len(args.prefixes) != len(args.in_dirs):
        parser.error(f"{len(args.in_dirs)} input folders but {len(args.prefixes)} prefixes")
    if args.pch_size < 1 or args.stride < 1 or args.workers < 1:
        parser.error("--pch_size, --stride and --workers must be positive")
    for prefix in args.prefixes:
        if not prefix or prefix.startswith(".") or any(c in prefix for c in ("/", "\\", "\0")):
            parser.error(f"--prefixes {prefix!r}: a prefix starts patch file names in --out_dir; it must not be "
                         f"empty, start with '.' or hold '/' or '\\'")
    return args


def check_settings(out_dir: Path, settings: dict) -> None:
    """Record ``settings`` (``SETTINGS`` -> value) in ``out_dir/SETTINGS_FILE``, or refuse (UserError)
    when the folder holds patches made with other settings, or patches and no (readable) record."""
    path = out_dir / SETTINGS_FILE
    try:
        old = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        old = "unreadable"
    if old == settings:
        return
    holds_patches = any(p.suffix == ".png" and not p.name.startswith(".") for p in out_dir.iterdir())
    if holds_patches:
        if isinstance(old, dict):
            changed = ", ".join(f"--{k} {old.get(k)} -> {settings[k]}" for k in SETTINGS if old.get(k) != settings[k])
            raise UserError(f"{out_dir} holds patches made with other settings ({changed}); run with the settings "
                            f"of {path}, choose another --out_dir, or empty it")
        raise UserError(f"{out_dir} holds patches but {'an unreadable' if old else 'no'} record of their settings "
                        f"({SETTINGS_FILE}); choose another --out_dir, or empty it")
    text = json.dumps(settings, indent=1) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _run(jobs: list[Job], args: argparse.Namespace) -> Iterator[Outcome]:
    """Crop every job, in this process (one worker) or in a pool, with a progress bar.

    Pool workers are forked where the platform allows it and ignore Ctrl-C: on an interrupt or
    an error the images not started are cancelled and the ones being cut finish.
    """
    tasks = [(job, args.out_dir, args.pch_size, args.stride) for job in jobs]
    with tqdm(total=len(tasks), desc="images", unit="img") as progress:
        if args.workers == 1:
            for task in tasks:
                yield crop_image(*task)
                progress.update()
            return
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(min(args.workers, len(tasks)), mp_context=context,
                                 initializer=signal.signal,
                                 initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
            futures = [pool.submit(crop_image, *task) for task in tasks]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    progress.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise


def _cut(jobs: list[Job], args: argparse.Namespace) -> int:
    """Cut every job into ``args.out_dir`` holding its lock, print the summary; returns the exit
    status (0, 1 when some images failed, 130 after Ctrl-C)."""
    counts = {"done": 0, "skipped": 0, "small": 0, "failed": 0}
    written, failures = 0, []
    try:
        with folder_lock(args.out_dir, what=f"{PROG} run"):
            errors.set_log_folder(args.out_dir)
            if removed := remove_stale_temporaries(args.out_dir):
                print(f"removed {len(removed)} temporary file(s) of an interrupted run")
            check_settings(args.out_dir, {key: getattr(args, key) for key in SETTINGS})
            errors.set_step("cutting patches")
            with contextlib.closing(_run(jobs, args)) as outcomes:  # workers done before unlock
                for outcome in outcomes:
                    counts[outcome.status] += 1
                    written += outcome.written
                    if outcome.message:
                        failures.append(outcome.message)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130

    for message in failures:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    if counts["small"]:
        print(f"{PROG}: warning: skipped {counts['small']} image(s) smaller than "
              f"{args.pch_size} x {args.pch_size}", file=sys.stderr)
    total = sum(1 for p in args.out_dir.iterdir()
                if p.suffix == ".png" and not p.name.startswith("."))
    print(f"{len(jobs)} images: {counts['done']} cut ({written} patches written), "
          f"{counts['skipped']} already done, {counts['small']} too small, "
          f"{counts['failed']} failed; {total} patches in {args.out_dir}")
    return 1 if failures else 0


def _command(argv: Sequence[str]) -> int:
    """Parse ``argv``, collect the jobs and cut them; returns the exit status (see ``main``)."""
    args = _parse_args(argv)
    try:
        jobs = collect_jobs(args.in_dirs, args.prefixes)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return _cut(jobs, args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status: 0 ok, 1 some images failed, the output folder
    is busy, cannot be written or holds patches of other settings (one line on stderr), or an
    unexpected error (one line and a log: ``utils.errors.report_errors``), 2 bad input, 130
    interrupted."""
    return report_errors(_command, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
