"""Where the project may write: paths kept inside the output folder the user named, and the record of
the files it wrote there, so that a file it did not write is never replaced.

- ``inside(folder, *parts)``: the path ``folder/parts...``, refused (UserError) when it resolves
  outside ``folder`` (an absolute part, '..', a symbolic link leading out).
- ``folder_name(name)``: a name from the command line (a test set given as '/abs/Set14' or
  '../x/Set14') made one plain folder name ('Set14') for output paths.
- ``refuse_foreign(folder, paths, overwrite)``: refuse (UserError) a planned output that exists and
  is not in ``folder``'s record ``.virnet_outputs.json`` (unless ``overwrite``); ``record(folder,
  paths, subfolders)``: add the outputs a run wrote to the record (a subfolder: everything below it,
  e.g. a protocol's saved images). A file written but not yet recorded when a run is killed counts
  as foreign at the next run (refused, or --overwrite).

See docs/reliability.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Union

from utils.errors import UserError
from utils.image_io import atomic_write

PathLike = Union[str, os.PathLike]

RECORD = ".virnet_outputs.json"
"""The file, in an output folder, naming (relative POSIX paths) the outputs the project wrote there."""


def inside(folder: PathLike, *parts: PathLike, what: str = "output") -> Path:
    """``folder`` joined with ``parts``; raises UserError when the result, resolved (symbolic links,
    '..'), lies outside ``folder`` resolved. ``what`` names the path in the message."""
    root = Path(folder)
    path = root.joinpath(*parts)
    resolved, base = path.resolve(), root.resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise UserError(f"{what} {path} would be written outside the output folder {root} (resolved: {resolved}); "
                        f"names may not hold '/', '..' or an absolute path")
    return path


def folder_name(name: str) -> str:
    """The last component of ``name`` once resolved ('/data/../Set14' -> 'Set14', '..' -> the parent
    folder's name); a plain name is returned unchanged. Raises UserError for a name with nothing left
    (the root folder)."""
    if name and not any(sep in name for sep in ("/", "\\")) and name not in (".", ".."):
        return name
    plain = Path(name).resolve().name
    if not plain:
        raise UserError(f"{name!r} names no folder an output could be named after")
    return plain


def _record_path(folder: Path) -> Path:
    return folder / RECORD


def recorded(folder: PathLike) -> set[str]:
    """The names in ``folder``'s record (see the module docstring); empty when there is none or it
    cannot be read (every existing file then counts as foreign)."""
    try:
        names = json.loads(_record_path(Path(folder)).read_text())
    except (OSError, ValueError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def _relative(folder: Path, path: Path) -> str:
    """``path`` (a full path inside ``folder``) as a relative POSIX name; raises UserError when it
    resolves outside ``folder``."""
    resolved, base = path.resolve(), folder.resolve()
    if not resolved.is_relative_to(base) or resolved == base:
        raise UserError(f"output {path} would be written outside the output folder {folder} (resolved: {resolved})")
    return resolved.relative_to(base).as_posix()


def is_ours(folder: PathLike, path: PathLike, names: set[str] | None = None) -> bool:
    """Whether ``path`` (a full path inside ``folder``) is named in ``folder``'s record, itself or
    through a recorded subfolder; ``names``: the record, when read already."""
    folder = Path(folder)
    names = recorded(folder) if names is None else names
    name = _relative(folder, Path(path))
    return name in names or name + "/" in names or any(name.startswith(n) for n in names if n.endswith("/"))


def refuse_foreign(folder: PathLike, files: Iterable[PathLike], overwrite: bool = False) -> None:
    """Check the planned output ``files`` (full paths inside ``folder``) before a run writes them:
    raises UserError for one that resolves outside ``folder``, or that exists and that ``folder``'s
    record does not name (unless ``overwrite``)."""
    folder = Path(folder)
    names = recorded(folder)
    for path in map(Path, files):
        _relative(folder, path)
        if not overwrite and os.path.lexists(path) and not is_ours(folder, path, names):
            raise UserError(f"{path} exists and was not written by this project; choose another output "
                            f"folder (-o) or a --prefix, or pass --overwrite to replace it")


def record(folder: PathLike, files: Iterable[PathLike] = (), subfolders: Iterable[PathLike] = ()) -> None:
    """Add to ``folder``'s record those of ``files`` and ``subfolders`` (full paths inside it; a
    subfolder stands for everything below it) that exist, the outputs a run wrote. Nothing is
    written when none is new."""
    folder = Path(folder)
    names = recorded(folder)
    new = {_relative(folder, Path(p)) for p in files if os.path.lexists(p)}
    new |= {_relative(folder, Path(p)) + "/" for p in subfolders if Path(p).is_dir()}
    if new - names:
        text = json.dumps(sorted(names | new), indent=0)
        atomic_write(_record_path(folder), lambda tmp: tmp.write_text(text + "\n"))
