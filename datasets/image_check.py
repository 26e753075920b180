"""Start-up check of a training set: find truncated or corrupt image files before training starts.

``check_images`` runs ``utils.image_io.check_image_file`` on every file (JPEG and PNG: structure
and checksums, no pixel decoding, about 1 ms per MB; other formats: a full decode) and remembers
each verdict in a JSON cache keyed by path, size and modification time, so that a resumed run
checks only new or changed files. A bad file either stops the run with one line naming it, or is
left out with a warning on the ``virnet.data`` logger.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Union

from utils.errors import UserError
from utils.image_io import ImageReadError, atomic_write, check_image_file

PathLike = Union[str, os.PathLike]

LOGGER = logging.getLogger("virnet.data")

_CACHE_VERSION = 1


class BadImagesError(UserError):
    """Some images of a set cannot be read; the message names the first ones and the count."""


def _load_cache(cache_path: Optional[Path]) -> dict:
    """The verdicts stored in ``cache_path``: {absolute path: {"size", "mtime_ns", "error"}}.
    A missing, unreadable or foreign file gives an empty cache (everything is checked again)."""
    if cache_path is None:
        return {}
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("version") != _CACHE_VERSION:
        return {}
    files = cache.get("files")
    return files if isinstance(files, dict) else {}


def _verdict(path: Path, cache: dict) -> tuple[Optional[str], bool]:
    """(None when ``path`` reads, else the one-line reason naming it; whether it was checked now).
    The verdict comes from ``cache`` when size and modification time match; a new one is stored."""
    try:
        stat = path.stat()
    except OSError:
        return f"{path}: no such image file", False
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    key = os.path.abspath(path)
    entry = cache.get(key)
    if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()):
        return entry.get("error"), False
    try:
        check_image_file(path)
        error = None
    except ImageReadError as err:
        error = str(err)
    cache[key] = {**stamp, "error": error}
    return error, True


def _summary(bad: list[tuple[Path, str]], total: int) -> str:
    """One line: how many of ``total`` images are bad, the first reason and the next names."""
    others = [str(path) for path, _ in bad[1:3]]
    more = len(bad) - 1 - len(others)
    tail = (f" (also {', '.join(others)}" + (f" and {more} more" if more else "") + ")"
            if others else "")
    return f"{len(bad)} of {total} images cannot be read, first {bad[0][1]}{tail}"


def check_images(paths: Iterable[PathLike], cache_path: Optional[PathLike] = None,
                 skip_bad: bool = False) -> list[Path]:
    """Check that every image of ``paths`` reads; returns the good ones as Paths, in input order.

    ``cache_path``: a JSON file (written atomically, its folder must exist) remembering each
    file's verdict under its absolute path, size and modification time; a file whose size and
    time match is not opened again. Verdicts of files not in ``paths`` are kept, so one cache
    may serve several sets. ``skip_bad``: leave bad files out and log a warning with their count
    on ``LOGGER`` instead of raising.

    Raises ``BadImagesError``, one line naming the first bad files and their count, when some
    file is missing, truncated or corrupt and ``skip_bad`` is false.
    """
    cache_path = Path(cache_path) if cache_path is not None else None
    cache = _load_cache(cache_path)
    changed = False
    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    paths = [Path(p) for p in paths]
    for path in paths:
        error, checked = _verdict(path, cache)
        changed |= checked
        if error:
            bad.append((path, error))
        else:
            good.append(path)
    if changed and cache_path is not None:
        text = json.dumps({"version": _CACHE_VERSION, "files": cache})
        atomic_write(cache_path, lambda tmp: tmp.write_text(text))
    if bad and not skip_bad:
        raise BadImagesError(f"{_summary(bad, len(paths))}; replace or remove them, "
                             f"or skip them (skip_bad_images)")
    if bad:
        LOGGER.warning("%s; skipping them", _summary(bad, len(paths)))
    return good
