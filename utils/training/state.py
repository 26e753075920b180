"""Training state on disk: atomic checkpoint files, model exports and exact resume.

Two formats:

- training state (``save_training_state`` / ``load_training_state``): a dict with the model,
  optimiser and scheduler states, the ``Progress`` counters, the sampler position, the RNG states
  of every rank, the config and the moving average of the weights (``ema``, None without it),
  everything needed to continue a run exactly. Loadable with ``torch.load(weights_only=True)``.
- model export (``export_model``): ``{'model_state_dict': ...}``, the released format, without
  any ``module.`` prefix, plus the model's ``'arch'`` entry; ``networks.load_checkpoint`` reads it.

Every file is written to a temporary name beside its target and renamed over it, so a run
killed at any moment leaves either the old or the new file, never a truncated one. Both formats
carry ``'sha256'``, the ``content_digest`` of everything else in the file, written in the same
file; reading a training state or weights for ``init_weights`` recomputes it, so a file damaged on
disk or in a copy is refused (a file without one, written before checkpoints carried it, is
loaded with one warning line). A file that cannot be used raises ``networks.CheckpointError``,
the project's one checkpoint error.

A run folder (``--save_dir``) holds a run when it holds any of ``run_files``: ``resume_path``
refuses to start afresh over them, and ``--fresh`` (``clear_run``) deletes them first.

On resume the config may differ from the checkpoint's: ``config_changes`` refuses the keys that
fix the run (``task.RESUME_FIXED``, the architecture) and returns the others, which take effect;
a changed learning-rate schedule is applied at once (``TrainingState.apply_schedule``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from networks import CheckpointError, load_file, read_checkpoint
from utils.config import Config, ConfigError
from utils.errors import one_line
from utils.image_io import is_temporary_file, save_torch
from utils.seeding import seed_everything, set_rng_state

from .optim import apply_options

FORMAT_VERSION = 1
CHECKSUM_KEY = "sha256"
"""Entry of a checkpoint or export holding the ``content_digest`` of its other entries."""
RUN_FILES = ("checkpoints/*.pth", "models/*.pth")
"""What makes a folder hold a run (patterns under ``save_dir``): its checkpoints and model exports."""
FRESH_REMOVES = (*RUN_FILES, "tb/events.out.tfevents.*")
"""What ``--fresh`` deletes (patterns under ``save_dir``): the run files and the TensorBoard events."""
LOGGER = logging.getLogger("virnet.train")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel`` (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def config_value(value: Any) -> Any:
    """Config values as JSON / ``weights_only``-safe values (paths become strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [config_value(v) for v in value]
    return value


def _feed(digest: "hashlib._Hash", value: Any) -> None:
    """Add ``value`` to ``digest``, tagged with its type and size so that different structures never
    feed the same bytes."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, Mapping):
        digest.update(f"D{len(value)}:".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    else:
        text = repr(value).encode("utf-8", "backslashreplace")
        digest.update(f"V{type(value).__name__}{len(text)}:".encode() + text)


def content_digest(value: Any) -> str:
    """The SHA-256 (hex) of a checkpoint's contents: every tensor's dtype, shape and bytes, every
    other value's type and ``repr``, dict entries in key order (nested dicts, lists and tuples
    alike). The same after a ``torch.save`` / ``torch.load`` round trip, whatever the device."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _body(ckpt: Mapping[str, Any]) -> dict:
    """``ckpt`` without its ``CHECKSUM_KEY`` entry: what the checksum covers."""
    return {k: v for k, v in ckpt.items() if k != CHECKSUM_KEY}


def with_checksum(ckpt: Mapping[str, Any]) -> dict:
    """``ckpt`` plus its ``CHECKSUM_KEY`` entry, ready to be written."""
    body = _body(ckpt)
    return {**body, CHECKSUM_KEY: content_digest(body)}


def verify_checksum(ckpt: Mapping[str, Any], path: str | os.PathLike) -> bool:
    """Whether ``ckpt`` (read from ``path``) carries a checksum; it is then checked. Raises
    CheckpointError, one line naming the file, when the contents do not match it."""
    saved = ckpt.get(CHECKSUM_KEY)
    if saved is None:
        return False
    if not isinstance(saved, str) or content_digest(_body(ckpt)) != saved:
        raise CheckpointError(f"checkpoint {path} is damaged: its contents do not match the checksum written with "
                              f"them (changed on disk or in a copy); use another copy")
    return True


def check_weight_types(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise CheckpointError, one line naming ``path`` and the entry, when a weight that ``model`` holds
    as floating point is stored in ``state`` as another type (an integer copy has lost its values)."""
    for name, tensor in unwrap(model).state_dict().items():
        saved = state.get(name)
        if tensor.is_floating_point() and isinstance(saved, torch.Tensor) and not saved.is_floating_point():
            raise CheckpointError(f"checkpoint {path}: weight {name!r} is stored as {saved.dtype}; floating-point "
                                  f"weights are expected (the file was converted wrongly, or is not weights)")


def read_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """The checkpoint ``path`` (``networks.read_checkpoint``) for loading into ``model``: its checksum
    checked when it has one, every floating-point weight of ``model`` stored as floating point. Raises
    CheckpointError, one line naming the file."""
    ckpt = read_checkpoint(path)
    verify_checksum(ckpt, path)
    check_weight_types(model, ckpt["model_state_dict"], path)
    return ckpt


def export_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``{'model_state_dict': state}`` (CPU tensors, no DDP prefix) to ``path``, plus the
    model's ``arch`` entry ({'task', 'kwargs'}, set by ``networks.build_model``) when it has one and
    the ``CHECKSUM_KEY`` entry."""
    net = unwrap(model)
    ckpt = {"model_state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if getattr(net, "arch", None) is not None:
        ckpt["arch"] = net.arch
    return save_torch(with_checksum(ckpt), path)


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters (``torch.optim.swa_utils``): its
    first ``update_parameters(model)`` copies them, each later one sets avg <- decay * avg +
    (1 - decay) * param. ``.module`` is the averaged network (a copy of ``model``, no gradients)."""
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    average.requires_grad_(False)
    return average


def save_training_state(state: dict, path: str | os.PathLike) -> Path:
    """Write a training-state dict (see the module docstring) with its checksum atomically; returns
    the path."""
    return save_torch(with_checksum({**state, "format_version": FORMAT_VERSION}), path)


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a file written by ``save_training_state`` onto the CPU.

    Raises ``CheckpointError`` when the file is missing, unreadable, damaged (its checksum does not
    match) or not a training state (for example a model-only export); a state without a checksum
    is loaded with a warning on the ``virnet.train`` logger.
    """
    state = load_file(path)
    if not isinstance(state, dict) or "optimizer" not in state or "format_version" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this engine "
                              f"(a model-only export cannot be resumed; use it to initialise weights)")
    if not verify_checksum(state, path):
        LOGGER.warning("%s has no checksum (written before checkpoints carried one): resumed unchecked", path)
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state['format_version']} is not supported "
                              f"(expected {FORMAT_VERSION})")
    return state


def run_files(save_dir: str | os.PathLike) -> list[Path]:
    """The files of ``save_dir`` that hold a run (``RUN_FILES``: checkpoints and model exports; not the
    temporaries of killed writes, ``utils.image_io.is_temporary_file``), sorted."""
    folder = Path(save_dir)
    found = {p for pattern in RUN_FILES for p in folder.glob(pattern) if p.is_file()}
    return sorted(p for p in found if not is_temporary_file(p))


def _listing(save_dir: Path, files: Sequence[Path], most: int = 4) -> str:
    names = [p.relative_to(save_dir).as_posix() for p in files]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def resume_path(cfg: Config) -> Path | None:
    """The checkpoint a run continues from: ``cfg.resume`` ('auto': ``<save_dir>/checkpoints/
    latest.pth`` when present), or None for a fresh run (``cfg.fresh``: one that starts over).
    Raises ConfigError for a missing file, for ``fresh`` with ``resume``, and for a fresh run in a
    folder that holds a run (``run_files``), naming the files found and the flags that go on."""
    save_dir = Path(cfg.save_dir)
    latest = save_dir / "checkpoints" / "latest.pth"
    if cfg.fresh:
        if cfg.resume:
            raise ConfigError(f"--fresh starts the run in {save_dir} over; it cannot be combined with --resume")
        return None
    if cfg.resume and cfg.resume != "auto":
        path = Path(cfg.resume)
        if not path.is_file():
            raise ConfigError(f"--resume: checkpoint not found: {cfg.resume}")
        return path
    if latest.is_file():
        if cfg.resume == "auto":
            return latest
        raise ConfigError(f"{save_dir} already holds a run ({latest}); pass --resume auto to continue it, --fresh "
                          f"to start over (deleting its checkpoints and models), or choose another --save_dir")
    found = run_files(save_dir)
    if found:
        best = save_dir / "checkpoints" / "best.pth"
        go_on = f"--resume {best} to continue from its best epoch, " if best.is_file() else ""
        raise ConfigError(f"{save_dir} holds a run ({_listing(save_dir, found)}) but no checkpoints/latest.pth: "
                          f"pass {go_on}--fresh to start over (deleting them), or choose another --save_dir")
    return None


def clear_run(save_dir: str | os.PathLike) -> list[Path]:
    """Delete what ``--fresh`` starts over from (``FRESH_REMOVES``: checkpoints, model exports,
    TensorBoard events of ``save_dir``); returns the deleted paths, sorted. Call it holding the
    folder's lock."""
    folder = Path(save_dir)
    found = sorted({p for pattern in FRESH_REMOVES for p in folder.glob(pattern) if p.is_file()})
    for path in found:
        path.unlink(missing_ok=True)
    return found


def remove_unused_folder(save_dir: str | os.PathLike, created: str | os.PathLike) -> bool:
    """Delete ``created`` (``save_dir`` or the highest of its parents that this run created) when
    ``save_dir`` holds no run file (``run_files``): what a run refused during its set-up left there
    (``train.log``, ``image_check.json``). Returns whether it was deleted."""
    folder = Path(created)
    if not folder.is_dir() or run_files(save_dir):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def config_changes(cfg: Config, saved: Mapping[str, Any], fixed: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """The keys of ``cfg`` whose value differs from ``saved``, the config of the checkpoint a run
    resumes ('resume', 'save_dir' and 'fresh' aside), as key -> (value then, value now). Raises
    ConfigError naming the first key of ``fixed`` that differs: a resumed run cannot change it."""
    changes = {key: (then, config_value(cfg[key])) for key, then in saved.items()
               if key in cfg and key not in ("resume", "save_dir", "fresh") and config_value(cfg[key]) != then}
    for key in fixed:
        if key in changes:
            then, now = changes[key]
            raise ConfigError(f"config key {key!r} cannot change on resume ({then} in the checkpoint, {now} now); "
                              f"drop the change, or start a fresh run in another --save_dir")
    return changes


@dataclass
class Progress:
    """Where a run stands: the 0-based ``epoch``, the iterations done in it and in all, the NaN/inf
    steps in a row, the best validation score, one record per finished epoch and the running sums
    of the current epoch's logged values (key '_count': their number)."""

    epoch: int = 0
    iter_in_epoch: int = 0
    iteration: int = 0
    bad_steps: int = 0
    best: float | None = None
    history: list[dict] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainingState:
    """What a checkpoint holds: the model (plain or DDP), its optimiser and scheduler, the run's
    ``Progress``, the config, the process layout (``world_size``, ``local_batch``), with config
    key ``ema_decay`` the moving average of the weights (``weight_average``) and, in fp16 training,
    the gradient scaler (its scale and growth counter, so that a resumed run scales as it would have)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: Config
    world_size: int
    local_batch: int
    progress: Progress = field(default_factory=Progress)
    ema: AveragedModel | None = None
    scaler: torch.amp.GradScaler | None = None

    def to_dict(self, rng: list) -> dict:
        """The checkpoint dict, with ``rng`` the RNG states of every rank (in rank order)."""
        p = self.progress
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": p.epoch,
            "iter_in_epoch": p.iter_in_epoch,
            "iteration": p.iteration,
            "sampler": {"seed": self.cfg.seed, "epoch": p.epoch, "position": p.iter_in_epoch * self.local_batch,
                        "world_size": self.world_size},
            "bad_steps": p.bad_steps,
            "best": p.best,
            "history": p.history,
            "sums": p.sums,
            "rng": rng,
            "config": {k: config_value(v) for k, v in self.cfg.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def save(self, ckpt_dir: Path, rng: list, best: bool = False) -> None:
        """Write ``ckpt_dir/latest.pth`` (and ``best.pth`` with ``best``)."""
        state = self.to_dict(rng)
        save_training_state(state, ckpt_dir / "latest.pth")
        if best:
            save_training_state(state, ckpt_dir / "best.pth")

    def apply_schedule(self) -> None:
        """Set the learning rate to the current config's schedule at the current epoch: the scheduler's
        base learning rate becomes ``cfg.lr`` (a resumed run whose lr, lr_min, warmup_epochs or
        epochs changed continues on the schedule it would have followed with the new values)."""
        scheduler, groups = self.scheduler, self.optimizer.param_groups
        scheduler.base_lrs = [self.cfg.lr for _ in groups]
        for group, factor in zip(groups, scheduler.lr_lambdas):
            group["initial_lr"] = self.cfg.lr
            group["lr"] = self.cfg.lr * factor(scheduler.last_epoch)

    def load(self, path: Path, rank: int) -> dict:
        """Continue from the checkpoint ``path``: weights, optimiser, scheduler, progress and this
        rank's RNG state (reseeded per rank and iteration when the number of processes changed).
        A run that averages its weights continues the checkpoint's average, or starts one from the
        resumed weights when the checkpoint has none (``ema_decay`` turned on at resume); fp16
        training continues the checkpoint's gradient scale, or starts a fresh scaler.
        Returns what the writing run looked like: {'config', 'world_size', 'rng_ranks'}. Raises
        CheckpointError when the checkpoint does not fit the model or config."""
        state = load_training_state(path)
        check_weight_types(self.model, state["model"], path)
        try:
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            apply_options(self.optimizer, self.cfg)
            if self.ema is not None and state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            if self.scaler is not None and state.get("scaler") is not None:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path} does not fit this model/config: {one_line(err)}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(state["epoch"], state["iter_in_epoch"], state["iteration"], state["bad_steps"],
                                 state["best"], list(state["history"]), dict(state["sums"]))
        rng = state["rng"]
        if len(rng) == self.world_size:
            note = set_rng_state(rng[rank])
            if note:
                LOGGER.warning("rank %d: %s", rank, note)
        else:
            seed_everything(self.cfg.seed + rank + 7919 * self.progress.iteration)
        return {"config": state["config"], "world_size": state["sampler"]["world_size"], "rng_ranks": len(rng)}
