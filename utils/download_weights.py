"""Fetch the authors' released checkpoints (GitHub release v1.0 of zsyOAOA/VIRNet) into model_zoo/.

    python -m utils.download_weights TASK... | all [--url URL] [--dest DIR] [--force]

TASK is the name of a released file in the weights catalogue ``model_zoo/catalogue.json``
(denoising-syn, denoising-real, sisr-x2, sisr-x3, sisr-x4; ``networks.catalogue``); each is saved
under the file name the authors' scripts use. The catalogue gives, per file, the task and
architecture, file name, release URL, released parameter count and SHA-256 (null until a
maintainer pins it).

A file is downloaded with ``torch.hub.download_url_to_file`` (progress bar when stderr is a
terminal) into a hidden temporary file in DIR and kept, under its released name, only once it
loads strictly (``networks.load_checkpoint``) into the released architecture, that architecture
has the released parameter count, and its SHA-256 equals the expected one. The expected SHA-256
is the one pinned in the catalogue; where that is null, the one recorded in
``DIR/released_sha256.json`` (file name -> SHA-256), which the first verified file writes, so
later downloads and ``verify_released`` are checked against it. To accept a changed release,
remove its entry from that record.

``--url`` takes a mirror (``https://``, ``file://``) for exactly one TASK. A file already in DIR
is verified (and its SHA-256 recorded) instead of fetched again, unless ``--force``. Any failure
(no network, HTTP 404, a truncated, corrupt or foreign file) prints one line naming the URL or
file and what to do, exits 1 and leaves nothing new in DIR; tasks fetched before it are kept.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch.hub

import networks
from networks.catalogue import CATALOGUE, read_catalogue
from utils import errors
from utils.image_io import atomic_path, atomic_write, is_temporary_file
from utils.locking import folder_lock

ZOO = Path(__file__).resolve().parents[1] / "model_zoo"
RECORD_NAME = "released_sha256.json"


class WeightsError(networks.CheckpointError):
    """A released file that cannot be fetched or verified; the message is one line."""


def released_models() -> dict:
    """The released files of the catalogue ``CATALOGUE``: name -> the fields of its
    ``networks.catalogue.WeightsEntry`` ('task', 'architecture', 'file', 'url', 'sha256', 'parameters',
    ...). Raises WeightsError when the catalogue is missing or malformed."""
    try:
        entries = read_catalogue(CATALOGUE)
    except ValueError as err:
        raise WeightsError(str(err)) from None
    return {name: dataclasses.asdict(entry) for name, entry in entries.items() if entry.url}


def _entry(task: str) -> dict:
    models = released_models()
    if task not in models:
        raise WeightsError(f"unknown task {task!r}; expected one of {', '.join(models)} or all")
    return models[task]


def file_sha256(path: os.PathLike) -> str:
    """The SHA-256 of a file, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_record(record: Path) -> dict:
    if not record.exists():
        return {}
    try:
        hashes = json.loads(record.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"cannot read {record} ({err}); delete it to record the hashes again") from None
    if not isinstance(hashes, dict):
        raise WeightsError(f"{record} is not a JSON object; delete it to record the hashes again")
    return hashes


def _expected(entry: dict, record: Path) -> Tuple[Optional[str], Path]:
    """The SHA-256 a released file must have (None when none is known yet) and where it comes from."""
    if entry.get("sha256"):
        return entry["sha256"], CATALOGUE
    return _read_record(record).get(entry["file"]), record


def _verify(path: Path, entry: dict, record: Path, source: str) -> str:
    """Check the file at `path` (named `source` in messages) against `entry`; returns its SHA-256.
    Raises WeightsError saying what is wrong (the caller adds what to do)."""
    net = networks.build_model(entry["task"], **entry["architecture"])
    try:
        networks.load_checkpoint(net, path, networks.read_checkpoint(path))
    except networks.CheckpointError as err:
        raise WeightsError(str(err).replace(str(path), source)) from None
    count = sum(p.numel() for p in net.parameters())
    if count != entry["parameters"]:
        raise WeightsError(f"the '{entry['task']}' architecture built here has {count} parameters, "
                           f"not the released {entry['parameters']} (the registry's released arguments changed)")
    digest = file_sha256(path)
    expected, where = _expected(entry, record)
    if expected is not None and digest != expected:
        raise WeightsError(f"{source} has SHA-256 {digest}, not {expected} (from {where}); if the release "
                           f"itself changed, remove the '{entry['file']}' entry of {where}")
    return digest


def _remember(record: Path, entry: dict, digest: str) -> None:
    """Record `digest` for the entry's file unless a SHA-256 is already pinned or recorded."""
    if _expected(entry, record)[0] is not None:
        return
    hashes = {**_read_record(record), entry["file"]: digest}
    atomic_write(record, lambda tmp: tmp.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n"))


def _reason(err: Exception) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def fetch_released(task: str, dest: os.PathLike = ZOO, url: Optional[str] = None, force: bool = False) -> Path:
    """Download the released file of `task` from `url` (default: the release) into `dest`, verify
    it (see the module docstring) and return its path. A verified file already in `dest` is kept
    unless `force`. Prints what it does; raises WeightsError (one line) and leaves nothing new in
    `dest` on any failure."""
    entry = _entry(task)
    dest = Path(dest)
    target, record = dest / entry["file"], dest / RECORD_NAME
    if target.exists() and not force:
        try:
            digest = _verify(target, entry, record, str(target))
        except WeightsError as err:
            raise WeightsError(f"{err}; delete {target} or pass --force to download it again") from None
        _remember(record, entry, digest)
        print(f"{task}: {target} is already there and verified (SHA-256 {digest})")
        return target
    url = url or entry["url"]
    official = "it" if url == entry["url"] else entry["url"]
    by_hand = f"download {official} by hand, place it at {target} and rerun this command to check it"
    print(f"{task}: downloading {url}")
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=sys.stderr.isatty())
        except (OSError, ValueError, http.client.HTTPException) as err:
            hint = "check the mirror URL" if url != entry["url"] else "check your network or pass --url with a mirror"
            raise WeightsError(f"cannot download {url} ({_reason(err)}); {hint}, or {by_hand}") from None
        try:
            digest = _verify(tmp, entry, record, url)
        except WeightsError as err:
            raise WeightsError(f"{url} is not the released '{task}' file: {err}; nothing was kept: retry "
                               f"(the transfer may have been cut short), or {by_hand}") from None
        _remember(record, entry, digest)
    print(f"{task}: saved {target} ({entry['parameters'] / 1e6:.2f} M parameters, SHA-256 {digest})")
    return target


def released_task_of(path: os.PathLike) -> Optional[str]:
    """The released file's name (in the catalogue) whose file `path` is: a file in model_zoo/ named
    as the authors' release names it; None for any other file."""
    path = Path(path)
    if path.parent.resolve() != ZOO.resolve():
        return None
    return next((task for task, entry in released_models().items() if entry["file"] == path.name), None)


def verify_released(path: os.PathLike, task: str) -> None:
    """Check that `path` holds the released file `task` (its catalogue name, e.g. 'sisr-x3')
    before a demo loads it: the file must exist and, when a SHA-256 is pinned in the catalogue or
    recorded beside it (``released_sha256.json``), have that SHA-256. Raises WeightsError (one line
    naming the file and the command that fetches it)."""
    entry = _entry(task)
    path = Path(path)
    command = f"python -m utils.download_weights {task}"
    if path.parent.resolve() != ZOO.resolve():
        command += f" --dest {path.parent}"
    if not path.is_file():
        raise WeightsError(f"{path} not found; fetch the authors' weights with: {command}")
    expected, where = _expected(entry, path.parent / RECORD_NAME)
    if expected is not None and file_sha256(path) != expected:
        raise WeightsError(f"{path} is not the released '{task}' file (its SHA-256 differs from the one in "
                           f"{where}); fetch it again with: {command} --force")


_PARTIAL = re.compile(r"(?P<tmp>.+)\.[0-9a-f]{32}\.partial")
"""The name ``torch.hub.download_url_to_file`` gives its file while downloading to ``<tmp>``."""


def remove_stale_downloads(dest: os.PathLike) -> list[Path]:
    """Delete what a download killed mid-way (kill -9, power loss) left in ``dest``: the hidden
    temporary files (``utils.image_io.atomic_path``) of a released file name and torch.hub's
    ``<temporary>.<hex>.partial`` beside them. Nothing else is touched. Call it holding the folder's
    lock (a live download's files look the same). Returns the removed paths, sorted."""
    dest = Path(dest)
    if not dest.is_dir():
        return []
    names = {entry["file"] for entry in released_models().values()}
    stale = []
    for path in dest.iterdir():
        match = _PARTIAL.fullmatch(path.name)
        tmp = match["tmp"] if match else path.name
        owner = re.fullmatch(r"\.(.+)\.[0-9a-f]{12}\.tmp.*", tmp, re.DOTALL)
        if is_temporary_file(tmp) and owner[1] in names and path.is_file() and not path.is_symlink():
            stale.append(path)
    for path in stale:
        path.unlink(missing_ok=True)
    return sorted(stale)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; returns the exit code (errors: one line on stderr, exit 1;
    Ctrl-C: 130; an unexpected error: one line and a log, ``utils.errors.report_errors``)."""
    return errors.report_errors(_command, argv)


def _command(argv: Sequence[str]) -> int:
    """Parse ``argv`` and fetch the tasks into --dest, holding its lock, after removing the leftovers
    of killed downloads; returns the exit code. Raises WeightsError (one line)."""
    models = released_models()
    listing = "\n".join(f"  {task:15s} {m['file']:27s} {m['url']}" for task, m in models.items())
    parser = argparse.ArgumentParser(prog="python -m utils.download_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"tasks (all: every one):\n{listing}")
    parser.add_argument("tasks", nargs="+", metavar="TASK", help="released task(s), or all")
    parser.add_argument("--url", help="mirror URL (https://, file://) of the file; only with one TASK")
    parser.add_argument("--dest", default=str(ZOO), metavar="DIR", help=f"folder to save into (default {ZOO})")
    parser.add_argument("--force", action="store_true", help="download again a file already in --dest")
    args = parser.parse_args(argv)
    tasks = list(models) if args.tasks == ["all"] else args.tasks
    try:
        if args.url and len(tasks) != 1:
            raise WeightsError(f"--url names one file; give exactly one TASK with it (got {len(tasks)})")
        for task in tasks:
            _entry(task)
        with folder_lock(args.dest, what="download_weights run"):
            errors.set_log_folder(args.dest)
            if removed := remove_stale_downloads(args.dest):
                print(f"removed {len(removed)} leftover file(s) of an interrupted download")
            for task in tasks:
                errors.set_step(f"fetching {task}")
                fetch_released(task, args.dest, args.url, args.force)
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        raise WeightsError(f"{err.strerror or err}{where}; check that --dest is a writable folder") from None
    except KeyboardInterrupt:
        print("interrupted; the file being fetched was not kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
