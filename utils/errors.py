"""Errors written for the user: one base class and one way of reporting them.

Every problem a user can fix (a bad flag, config key, path, image) raises a subclass of
``UserError`` (or ``networks.CheckpointError`` for a checkpoint: ``networks`` imports nothing of the
project, so that class says ``user_facing = True`` as UserError does, and this module needs neither
``networks`` nor torch) whose message is one line naming the file, key or flag and what to do. The
command-line entry points (trainers, demos, tools) run through ``report_errors``, which prints
such an error as ``[prog: ]error: <message>`` on stderr and returns exit status 1; bugs keep their
traceback.
"""
from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence


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


def report_errors(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
                  prog: str | None = None) -> int:
    """Call ``run(argv)``; a user-facing error (``UserError``, ``networks.CheckpointError``: a class
    with ``user_facing = True``) or an ``OSError`` (e.g. a folder that cannot be written) prints one
    line ``[prog: ]error: <message>`` on stderr and returns 1, Ctrl-C prints ``[prog: ]interrupted``
    and returns 130. Other exceptions (bugs) propagate with their traceback. Returns ``run``'s exit
    status otherwise."""
    prefix = f"{prog}: " if prog else ""
    try:
        return run(argv)
    except Exception as err:  # noqa: BLE001 - anything but a user-facing error or an OSError is re-raised
        if getattr(err, "user_facing", False):
            message = one_line(err)
        elif isinstance(err, OSError):
            message = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
        else:
            raise
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return 130
    print(f"{prefix}error: {message}", file=sys.stderr)
    return 1
