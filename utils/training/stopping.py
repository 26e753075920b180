"""Stopping a run cleanly before its last epoch: a wall-time limit (``--time_limit``) and the
signals that batch systems and users send (SIGTERM, SIGUSR1: SLURM's ``--signal``; SIGINT: Ctrl-C).

A ``StopRequest`` only records the request; the loop acts on it between two steps, where every
process of a DDP run agrees on it in the collective it already runs per step, writes
``checkpoints/latest.pth`` at that exact iteration and ends, so that ``--resume auto`` continues
as if the run had never stopped. Ctrl-C while a stop is pending stops at once (the last checkpoint stays).
"""
from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator

from utils.config import ConfigError

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))
"""The signals that ask a run to stop after its current step."""

TIME_LIMIT = 1
"""``StopRequest.code`` of a reached time limit; a signal's code is 1 + its number."""

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_UNIT_FORM = re.compile(r"(?:\d+(?:\.\d*)?[dhms])+")
_CLOCK_FORM = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_duration(text: str) -> float:
    """Seconds of a wall time written '90m', '2h', '1h30m', '45s', '1.5h', '1d12h', or as SLURM's
    ``--time`` takes it: minutes ('90'), 'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM', 'D-HH:MM:SS'.
    Raises ConfigError for anything else or a duration of zero."""
    value = text.strip().lower()
    if _UNIT_FORM.fullmatch(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d*)?)([dhms])", value))
    elif match := _CLOCK_FORM.fullmatch(value):
        days, first, second, third = (int(g) if g is not None else None for g in match.groups())
        if days is not None:  # D-HH[:MM[:SS]]
            seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
        elif third is not None:  # HH:MM:SS
            seconds = first * 3600 + second * 60 + third
        elif second is not None:  # MM:SS
            seconds = first * 60 + second
        else:  # minutes
            seconds = first * 60
    else:
        raise ConfigError(f"--time_limit: expected a duration such as 90m, 2h30m, 45s or 02:30:00, got {text!r}")
    if seconds <= 0:
        raise ConfigError(f"--time_limit: must be longer than zero, got {text!r}")
    return seconds


def describe(code: int) -> str:
    """The reason of a stop ``code`` (``StopRequest.code``) in words: 'the time limit' or 'SIGTERM'."""
    if code == TIME_LIMIT:
        return "the time limit"
    return signal.Signals(code - 1).name


def exit_status(code: int) -> int:
    """The exit status of a run that ended for ``code``: 0 when it ran to its end (0) or stopped at the
    time limit (it did what was asked), 128 + the signal's number for a signal, as a shell reports a
    process ended by it."""
    return 0 if code in (0, TIME_LIMIT) else 128 + code - 1


class StopRequest:
    """Whether this process has been asked to stop: by a signal of ``STOP_SIGNALS`` (while
    ``catching``) or by its time limit, ``time_limit_s`` seconds after ``start`` (``time.monotonic``;
    None: no limit)."""

    def __init__(self, time_limit_s: float | None = None, start: float | None = None):
        self.time_limit_s = time_limit_s
        self.start = time.monotonic() if start is None else start
        self.signal_code = 0

    def code(self, next_step_s: float = 0.0) -> int:
        """0 to go on; else the reason to stop now: 1 + the number of the signal received, or
        ``TIME_LIMIT`` when going on to the end of the next step, expected in ``next_step_s``
        seconds (an epoch end on the way included), would end past the limit."""
        if self.signal_code:
            return self.signal_code
        if self.time_limit_s is not None and time.monotonic() - self.start + next_step_s >= self.time_limit_s:
            return TIME_LIMIT
        return 0

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signal_code:
            raise KeyboardInterrupt  # Ctrl-C while a stop is pending: stop at once
        self.signal_code = self.signal_code or 1 + signum

    @contextlib.contextmanager
    def catching(self) -> Iterator[StopRequest]:
        """Record the signals of ``STOP_SIGNALS`` instead of dying of them, inside the block (the
        earlier handlers come back after it). Outside the main thread, where Python cannot set
        handlers, signals keep their usual effect."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the data-loading workers: they ignore ``STOP_SIGNALS``, which a terminal or
    a batch system sends to every process of the job, so that the main process can finish its step
    and write its checkpoint while they still serve it (they end with it)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
