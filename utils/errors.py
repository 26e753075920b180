"""Errors written for the user: one base class and one way of reporting them.

Every problem a user can fix (a bad flag, config key, path, image) raises a subclass of
``UserError`` (or ``networks.CheckpointError`` for a checkpoint: ``networks`` imports nothing of the
project, so that class says ``user_facing = True`` as UserError does, and this module needs neither
``networks`` nor torch) whose message is one line naming the file, key or flag and what to do. The
command-line entry points (trainers, demos, tools) run through ``report_errors``, which prints
such an error as ``[prog: ]error: <message>`` on stderr and returns exit status 1.

Anything else (a bug, or a case nobody foresaw) is guarded the same way: one line naming the step the
run was in (``set_step``), where in the project it was raised and the file its full traceback was
written to (``error-*.log`` in the output folder the run registered with ``set_log_folder``, else a
temporary file), exit status 1. ``--debug`` on the command line, or ``VIRNET_DEBUG=1`` in the
environment, lets the traceback through instead. See docs/reliability.md.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; its message is one line."""

    user_facing = True


def one_line(err: BaseException) -> str:
    """The last non-empty line of an error message. DataLoader workers wrap errors in tracebacks
    whose last line is ``module.ErrorClass: message``; that prefix is dropped."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return re.sub(r"^(?:\w+\.)*\w*(?:Error|Exception): ", "", lines[-1])


@contextlib.contextmanager
def user_errors(*types: type[BaseException], prefix: str = "",
                error: type[UserError] = UserError) -> Iterator[None]:
    """Within the block, an exception of one of ``types`` (e.g. the FileNotFoundError / ValueError of
    a data reader, whose messages name the file) becomes ``error`` (a UserError class) with the same
    message, after ``prefix: `` when given; UserErrors pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except types as err:
        raise error(f"{prefix}: {err}" if prefix else str(err)) from None


DEBUG_FLAG = "--debug"
DEBUG_ENV = "VIRNET_DEBUG"
_ROOT = Path(__file__).resolve().parents[1]
_state = {"step": "starting", "log_folder": None}


def set_step(step: str) -> None:
    """Name what the run is doing now (e.g. 'loading the model', 'restoring x.png'), for the one line
    of an unexpected error (``report_errors``)."""
    _state["step"] = step


def set_log_folder(folder: os.PathLike | None) -> None:
    """The folder an unexpected error's traceback is written to (the run's output folder); None: a
    temporary file."""
    _state["log_folder"] = None if folder is None else Path(folder)


def _debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug``, and whether it or ``VIRNET_DEBUG`` (1, true, yes) asks for tracebacks."""
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")
    return [arg for arg in argv if arg != DEBUG_FLAG], debug or DEBUG_FLAG in argv


def _where(err: BaseException) -> str:
    """'path:line in function' of the innermost frame of ``err``'s traceback inside this repository
    (not its virtual environment), else of the innermost frame."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if Path(f.filename).resolve() != Path(__file__).resolve()]
    ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(_ROOT)
            and not any(part.startswith(".venv") or part == "site-packages" for part in Path(f.filename).parts)]
    frame = (ours or frames or [None])[-1]
    if frame is None:
        return "unknown place"
    name = Path(frame.filename)
    name = name.resolve().relative_to(_ROOT) if ours else name
    return f"{name}:{frame.lineno} in {frame.name}"


def write_traceback(err: BaseException, prog: str | None = None) -> Path:
    """Write the full traceback of ``err`` to a new file ``error-<prog>-<time>-<pid>.log`` in the
    registered log folder (``set_log_folder``), or in the temporary folder when none is registered or
    it cannot be written; returns its path."""
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"error-{re.sub(r'[^A-Za-z0-9_.-]', '_', prog or 'virnet')}-{stamp}-{os.getpid()}.log"
    folder = _state["log_folder"]
    if folder is not None:
        try:
            path = folder / name
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=name[:-4] + "-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(tmp)


def unexpected_line(err: BaseException, log: Path) -> str:
    """The one line of an unexpected error: the step, the error, where it was raised, the log."""
    message = one_line(err) if str(err).strip() else ""
    message = message if len(message) <= 300 else message[:297] + "..."
    detail = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return (f"unexpected error while {_state['step']}: {detail} (at {_where(err)}); the full traceback is in "
            f"{log} (rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 to print it)")


def report_errors(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
                  prog: str | None = None) -> int:
    """Call ``run(argv)`` (``argv`` None: ``sys.argv[1:]``), with ``--debug`` taken out of the
    arguments; a user-facing error (``UserError``, ``networks.CheckpointError``: a class with
    ``user_facing = True``) or an ``OSError`` (e.g. a folder that cannot be written) prints one line
    ``[prog: ]error: <message>`` on stderr and returns 1, Ctrl-C prints ``[prog: ]interrupted`` and
    returns 130. Any other exception prints one line (``unexpected_line``: the step, the error, the
    file and line it came from, the log holding its traceback, ``write_traceback``) and returns 1;
    with ``--debug`` or ``VIRNET_DEBUG=1`` it propagates with its traceback. Returns ``run``'s exit
    status otherwise."""
    prefix = f"{prog}: " if prog else ""
    args, debug = _debug_requested(list(sys.argv[1:] if argv is None else argv))
    set_step("starting")
    set_log_folder(None)
    try:
        return run(args)
    except Exception as err:  # noqa: BLE001 - the guard of every entry point
        if getattr(err, "user_facing", False):
            message = one_line(err)
        elif isinstance(err, OSError):
            message = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
        elif debug:
            raise
        else:
            message = unexpected_line(err, write_traceback(err, prog))
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return 130
    print(f"{prefix}error: {message}", file=sys.stderr)
    return 1


def run_main(main: Callable[[], object], prog: str | None = None) -> None:
    """Exit with the status of ``main()`` (an int; None or any other result, such as the record a
    bench script's ``main`` returns: 0) run through ``report_errors``: the guard of an entry point
    whose ``main`` reads ``sys.argv`` itself (the bench scripts); its tracebacks are printed with
    ``VIRNET_DEBUG=1``."""
    def status(_) -> int:
        result = main()
        return result if isinstance(result, int) else 0
    sys.exit(report_errors(status, [], prog))
