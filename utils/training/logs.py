"""What a training run reports: log lines (stdout through tqdm, and ``train.log``), TensorBoard
scalars and image grids, and the run's ``config.json``. Only rank 0 logs.

TensorBoard events are written by ``EventFile`` in the main thread, each record as it comes (no
background writer thread whose failure would print a traceback); a file that cannot be written
(a full disk) ends the run with one line naming it (``LogWriteError``), as ``train.log`` does.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from utils.config import Config
from utils.errors import UserError

from .state import config_value

LOGGER = logging.getLogger("virnet.train")
DATA_LOGGER = logging.getLogger("virnet.data")
"""The data sets' warnings (e.g. skipped unreadable images), logged with the run's."""


class LogWriteError(UserError, OSError):
    """A log file (``train.log``, the TensorBoard events) cannot be written; one line naming it."""


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Within the block an ``OSError`` (e.g. a full disk) becomes a LogWriteError naming ``path``."""
    try:
        yield
    except OSError as err:
        if isinstance(err, UserError):
            raise
        raise LogWriteError(f"cannot write {path}: {err.strerror or err}; the checkpoints written so far are kept - "
                            f"free space, then continue with --resume auto") from None


class _RunLogFile(logging.FileHandler):
    """``train.log``: a record that cannot be written raises LogWriteError (the logging module would
    print a traceback and go on); closing after such a failure is quiet."""

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            with _writing(Path(self.baseFilename)):
                raise err
        super().handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()


_EVENT_FILES = itertools.count()
"""Numbers the event files of this process, so that two runs in one second never share a name."""


class EventFile:
    """A TensorBoard event file in ``folder`` (created), written in the calling thread: scalars and
    CHW image grids. ``purge_step``: TensorBoard drops the events at or after it from earlier files
    of the folder (a resumed run). Every method raises LogWriteError naming the file when it cannot
    be written."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event = Event
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_EVENT_FILES)}"
        self.path = folder / name
        with _writing(self.path):
            folder.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "xb")  # noqa: SIM115 - held open for the run, closed by close()
            self._records = RecordWriter(self._file)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._write(Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START)))
        self.flush()

    def _write(self, event) -> None:
        with _writing(self.path):
            self._records.write(event.SerializeToString())

    def _summary(self, summary, step: int) -> None:
        self._write(self._event(wall_time=time.time(), step=step, summary=summary))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Record scalar ``value`` under ``tag`` at iteration ``step``."""
        from torch.utils.tensorboard.summary import scalar
        self._summary(scalar(tag, float(value)), step)

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """Record a 3 x H x W image with values in [0, 1] under ``tag`` at iteration ``step``."""
        from torch.utils.tensorboard.summary import image as image_summary
        self._summary(image_summary(tag, image, dataformats="CHW"), step)

    def flush(self) -> None:
        """Push what was written to the disk."""
        with _writing(self.path):
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file, quietly: it runs while a run ends, also when that end is the error
        of a full disk, whose one line must stay the one reported (``flush`` at each epoch end reports)."""
        with contextlib.suppress(OSError):
            self._file.close()


class _TqdmHandler(logging.StreamHandler):
    """Log records printed through ``tqdm.write`` so that they do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


@contextlib.contextmanager
def logging_to(log_file: Path | None):
    """Send ``LOGGER`` and ``DATA_LOGGER`` to stdout and ``log_file`` (None: no output) for the
    duration of a run."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = _RunLogFile(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers += [_TqdmHandler(), file_handler]
    else:
        handlers.append(logging.NullHandler())
    loggers = (LOGGER, DATA_LOGGER)
    old = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for h in handlers:
            logger.addHandler(h)
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, old):
            for h in handlers:
                logger.removeHandler(h)
            logger.setLevel(level)
            logger.propagate = propagate
        for h in handlers:
            h.close()


def image_grid(images: torch.Tensor) -> torch.Tensor:
    """Up to 8 images of an N x C x H x W batch as one 3 x H' x W' grid, 4 per row, each
    normalised to its own range (for TensorBoard)."""
    from torchvision.utils import make_grid
    images = images.detach()[:8].float().cpu()
    return make_grid(images, nrow=min(4, images.shape[0]), normalize=True, scale_each=True)


class RunLog:
    """The log of one run on rank 0: ``open`` it, then log the start, steps, images and epochs."""

    def __init__(self, cfg: Config, save_dir: Path):
        self.cfg, self.save_dir = cfg, save_dir
        self.writer = None

    def open(self, purge_step: int | None) -> None:
        """Start the TensorBoard event file in ``tb/`` (``purge_step``: drop events at or after it, on
        resume)."""
        self.writer = EventFile(self.save_dir / "tb", purge_step=purge_step)

    def close(self) -> None:
        """Flush and close the TensorBoard event file."""
        if self.writer is not None:
            self.writer.close()

    def start(self, label: str, model: nn.Module, device: torch.device, world_size: int, local_batch: int,
              resumed: dict | None) -> None:
        """Log the run's set-up; ``resumed``: {'path', 'epoch', 'iter_in_epoch', 'iteration', 'config',
        'world_size', 'rng_ranks', 'changes'} of the checkpoint it continues ('changes': the config
        keys changed since, key -> (then, now), ``state.config_changes``), or None (then config.json
        is written)."""
        cfg = self.cfg
        counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
        total = sum(p.numel() for p in model.parameters())
        LOGGER.info("task %s on %s, %d process(es), global batch %d (%d per process)",
                    label, device, world_size, cfg.batch_size, local_batch)
        LOGGER.info("parameters: %.2fM total (%s)", total / 1e6,
                    ", ".join(f"{n} {c / 1e6:.2f}M" for n, c in counts.items()))
        LOGGER.info("config %s: %s", cfg.source, ", ".join(f"{k}={config_value(v)}" for k, v in cfg.items()))
        if resumed is None:
            text = json.dumps({k: config_value(v) for k, v in cfg.items()}, indent=2)
            with _writing(self.save_dir / "config.json"):
                self.save_dir.mkdir(parents=True, exist_ok=True)
                (self.save_dir / "config.json").write_text(text + "\n", encoding="utf-8")
            return
        LOGGER.info("resumed from %s at epoch %d, iteration %d of the epoch (global %d)",
                    resumed["path"], resumed["epoch"] + 1, resumed["iter_in_epoch"], resumed["iteration"])
        if resumed["changes"]:
            LOGGER.info("config changed since the checkpoint, in effect from here: %s",
                        ", ".join(f"{k} {then} -> {now}" for k, (then, now) in resumed["changes"].items()))
        if resumed["rng_ranks"] != world_size or resumed["world_size"] != world_size:
            LOGGER.warning("checkpoint written by %d process(es), resumed with %d: the rest of "
                           "the run is not an exact continuation", resumed["world_size"], world_size)
        if resumed["epoch"] >= cfg.epochs:
            LOGGER.info("the run had already finished its %d epochs", cfg.epochs)

    def images(self, prefix: str, visuals: Mapping[str, torch.Tensor], iteration: int) -> None:
        """Write each named batch of images as a TensorBoard grid under ``prefix/name``."""
        for name, images in visuals.items():
            self.writer.add_image(f"{prefix}/{name}", image_grid(images), iteration)

    def step(self, scalars: Mapping[str, float], grads: Mapping[str, float], limits: Mapping[str, float],
             lr: float, where: str, iteration: int) -> None:
        """One training step's scalars (loss terms averaged over the processes, pre-clip gradient
        norms and their clip limits per sub-network, learning rate); ``where``: e.g. '[epoch 1/3] iter
        4/8 (global 4)'."""
        for k, v in scalars.items():
            self.writer.add_scalar(f"train/{k}", v, iteration)
        for k, v in grads.items():
            self.writer.add_scalar(f"train/grad_norm_{k}", v, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)
        clip = ", ".join(f"{k}={v:.2e}/{limits[k]:.0e}" for k, v in grads.items() if k != "other")
        LOGGER.info("%s %s | grad %s | lr %.2e", where, " ".join(f"{k}={v:+.4e}" for k, v in scalars.items()),
                    clip or "-", lr)

    def epoch(self, record: Mapping[str, float], improved: bool, iteration: int) -> None:
        """An epoch's record (train means, validation metrics, lr, time) as scalars and a log line."""
        for k, v in record.items():
            if k != "epoch":
                self.writer.add_scalar(k if k.startswith("val/") else f"epoch/{k}", v, iteration)
        self.writer.flush()
        parts = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
        LOGGER.info("epoch %d/%d done: %s%s", record["epoch"], self.cfg.epochs, parts,
                    " (best so far)" if improved else "")
