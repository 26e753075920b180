"""One run per folder: an exclusive lock that a process holds on its output folder while it writes.

    with folder_lock(out_dir, what="training run"):
        ...  # nothing else that locks out_dir can run until the block exits

The lock is ``fcntl.flock`` on the file ``.virnet.lock`` inside the folder, which holds the pid and
the description of its holder. The kernel releases it when the holder exits in any way, SIGKILL and
power loss included, so a crashed run never blocks the next one: a lock file left behind is simply
locked again. POSIX only (Linux, macOS).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator, Union

from utils.errors import UserError

LOCK_NAME = ".virnet.lock"
"""Name of the lock file inside a locked folder."""


class FolderLockError(UserError):
    """The folder is locked by another process, or cannot be created or written."""


def _lock_file(path: Path, what: str) -> int:
    """Open ``path`` (created if missing), lock it exclusively without waiting and write this
    process's pid and ``what`` into it; returns the descriptor. Raises ``BlockingIOError`` when
    another process holds the lock, another ``OSError`` when the file cannot be created or
    written.

    A releasing holder deletes the file: a lock taken on a file that is no longer at ``path`` is
    dropped and taken again on the file now there.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = os.fstat(fd)
            current = os.stat(path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {what}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _holder(path: Path, what: str) -> str:
    """"<what> (pid N)" of the holder of the lock file ``path``, as it wrote them; ``what`` when
    the file cannot tell (the holder has not written it yet)."""
    try:
        pid, _, holder = path.read_text().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return what
    return f"{holder or what} (pid {pid})" if pid.isdigit() else what


@contextlib.contextmanager
def folder_lock(folder: Union[str, os.PathLike], what: str = "run") -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` for the ``with`` block; yields ``folder`` as a Path.

    The folder is created (with its parents) if missing. Take the lock before writing anything
    into the folder. On exit the lock file is deleted and the lock released. Processes forked
    inside the block share the lock: if the holder is killed, its workers keep the folder busy
    until they exit. ``what`` describes the holder, e.g. "training run"; it is written in the
    lock file with the pid, for the error another process gets.

    Raises ``FolderLockError`` with one line: "<folder> is in use by another <holder's what>
    (pid N); wait for it or choose another folder" when another process (or another
    ``folder_lock`` of this one) holds it, or "<folder>: cannot write to this folder (<reason>);
    choose another folder".
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _lock_file(path, what)
    except BlockingIOError:
        raise FolderLockError(f"{folder} is in use by another {_holder(path, what)}; "
                              f"wait for it or choose another folder") from None
    except OSError as err:
        raise FolderLockError(f"{folder}: cannot write to this folder ({err.strerror or err}); "
                              f"choose another folder") from None
    try:
        yield folder
    finally:
        with contextlib.suppress(OSError):  # a lock file left behind is harmless
            path.unlink(missing_ok=True)
        os.close(fd)
