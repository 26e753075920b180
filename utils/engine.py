"""The training engine shared by ``train_denoising_syn.py``, ``train_denoising_real.py`` and
``train_sisr.py``.

A trainer subclasses ``Task`` and supplies only what is specific to it:

- ``keys``: its config keys (``utils.config.Key``), added to the engine's ``ENGINE_KEYS``;
- ``build_model()``: the network (its sub-networks named ``RNet`` / ``SNet`` / ``KNet`` get the
  gradient clipping of config keys ``clip_grad_R`` / ``clip_grad_S`` / ``clip_grad_K``);
- ``build_train_set(length)``: a map-style dataset of ``length`` samples with ``set_epoch(e)``,
  whose sample ``i`` depends only on (seed, epoch, i) (``utils.seeding.sample_rng``);
- ``build_val_sets()``: ``ValSet`` entries (validation data sets and batch sizes);
- ``train_step(model, batch, ctx)`` -> ``StepOutput`` (loss, loss terms, image callback);
- ``val_step(model, batch, ctx)`` -> ``ValOutput`` (metrics such as PSNR / SSIM, image callback).

The script then calls ``sys.exit(engine.main(MyTask))``. The engine does the rest: command
line, config checks, device choice, ``torchrun`` DDP (NCCL on GPU, gloo on CPU), Adam with
warm-up + cosine decay per epoch, per-sub-network gradient clipping, optional bf16 autocast and
channels-last, skipping NaN/inf steps, tqdm / log file / TensorBoard, atomic checkpoints with
exact resume (model, optimiser, scheduler, sampler position, RNG states of every rank), and
model exports in the released ``{'model_state_dict': ...}`` format.

Helpers live beside it: ``utils.config`` (config files and schema), ``utils.distributed``
(devices, process group, resumable sampler), ``utils.checkpoint`` (atomic checkpoint files),
``utils.seeding`` (per-sample generators, RNG states). Steps that need randomness (MixUp,
reparameterisation) use the global torch RNG: it is seeded per rank and saved in checkpoints.

Files under ``save_dir``: ``checkpoints/latest.pth`` and ``checkpoints/best.pth`` (full training
state), ``models/model_last.pth`` and ``models/model_best.pth`` (weights only), ``tb/``
(TensorBoard events), ``train.log`` and ``config.json`` (the checked config of the first run).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from utils.checkpoint import (CheckpointError, export_model, load_training_state,
                              save_training_state, unwrap)
from utils.config import REQUIRED, Config, ConfigError, Key, describe_schema, load_config
from utils.distributed import DistEnv, ResumableSampler, all_gather_objects, setup_distributed
from utils.image_io import ImageReadError
from utils.seeding import get_rng_state, seed_everything, set_rng_state

Batch = Sequence[torch.Tensor]
Visuals = Callable[[], Mapping[str, torch.Tensor]]

SUB_NETWORKS = ("R", "S", "K")
"""Sub-networks clipped separately: parameters whose lower-cased name contains 'rnet' etc."""

ENGINE_KEYS: dict[str, Key] = {
    "seed": Key("int", 1234, "seed of weight initialisation, sample draws and shuffling", minimum=0),
    "batch_size": Key("int", 16, "global batch size, split evenly over the processes", minimum=1),
    "epochs": Key("int", REQUIRED, "number of epochs", minimum=1),
    "iters_per_epoch": Key("int", 10000, "iterations per epoch; an epoch draws iters_per_epoch * "
                           "batch_size samples (the reference: 10000)", minimum=1),
    "warmup_epochs": Key("int", 0, "epochs of linear learning-rate warm-up before the cosine decay",
                         minimum=0),
    "lr": Key("float", REQUIRED, "Adam learning rate after the warm-up", minimum=0),
    "lr_min": Key("float", 1e-6, "learning rate reached by the cosine decay at the last epoch", minimum=0),
    "print_freq": Key("int", 100, "iterations between log lines and TensorBoard scalars", minimum=1),
    "image_freq": Key("int", 5000, "iterations between TensorBoard training images (0: never)", minimum=0),
    "save_freq": Key("int", 1000, "iterations between mid-epoch checkpoints (0: at epoch ends only)",
                     minimum=0),
    "val_freq": Key("int", 1, "epochs between validations (0: never); when > 0 the last epoch is "
                    "always validated", minimum=0),
    "val_images": Key("int", 4, "validation samples whose images go to TensorBoard", minimum=0),
    "num_workers": Key("int", 8, "DataLoader workers in total, divided among the processes", minimum=0),
    "prefetch_factor": Key("int", 2, "batches loaded ahead by each worker", minimum=1),
    "bf16": Key("bool", False, "bfloat16 autocast of the forward pass (meant for CUDA)"),
    "channels_last": Key("bool", False, "channels-last memory format for model and inputs (CUDA)"),
    "deterministic": Key("bool", False, "torch.use_deterministic_algorithms (slower on CUDA)"),
    "max_bad_steps": Key("int", 20, "stop after this many steps in a row with a NaN/inf loss or "
                         "gradient (such steps are skipped)", minimum=1),
    "save_dir": Key("str", "train_record", "folder for checkpoints, exports and logs (--save_dir)"),
    "resume": Key("str", "", "training checkpoint to continue, 'auto' for "
                  "<save_dir>/checkpoints/latest.pth if present, '' for a fresh run (--resume)"),
}

LOGGER = logging.getLogger("virnet.train")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. NaN/inf for too many steps); the message is one line."""


ERRORS = (ConfigError, CheckpointError, TrainingError, ImageReadError)
"""Errors that ``main`` reports as one line on stderr (exit status 1) instead of a traceback."""


# --------------------------------------------------------------------------- task interface


@dataclass
class StepOutput:
    """What ``Task.train_step`` returns.

    loss: scalar tensor to minimise. terms: scalar tensors logged beside it (e.g. the ELBO
    parts). visuals: called only when images are due; returns name -> N x C x H x W tensors.
    """

    loss: torch.Tensor
    terms: Mapping[str, torch.Tensor] = field(default_factory=dict)
    visuals: Visuals | None = None


@dataclass
class ValOutput:
    """What ``Task.val_step`` returns: per-batch mean ``metrics`` (names of ``Task.val_metrics``)
    and an optional image callback as in ``StepOutput``."""

    metrics: Mapping[str, float]
    visuals: Visuals | None = None


@dataclass
class ValSet:
    """A validation data set: ``name`` (used in log tags), the data set, its batch size."""

    name: str
    dataset: Dataset
    batch_size: int = 1


@dataclass
class StepContext:
    """Run information handed to ``train_step`` / ``val_step``.

    device: where the batch and model live. epoch: 0-based. iteration: global iteration count
    before this step. rank, world_size: the process and the number of processes. val_set: name
    of the validation set being evaluated (None while training). bf16: autocast requested.
    """

    device: torch.device
    epoch: int
    iteration: int
    rank: int = 0
    world_size: int = 1
    val_set: str | None = None
    bf16: bool = False

    def autocast(self):
        """Context manager: bfloat16 autocast when the config asks for it, else a no-op."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


class Task:
    """Base class of a trainer; see the module docstring. ``self.cfg`` is the checked config."""

    name = "task"
    description = ""
    default_config = ""
    keys: Mapping[str, Key] = {}
    val_metrics: tuple[str, ...] = ("psnr", "ssim")
    """Metric names of ``ValOutput.metrics``; the first one (higher is better) picks 'best'."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @classmethod
    def schema(cls) -> dict[str, Key]:
        """Every config key: the engine's, then the task's (a task may redefine a default)."""
        return {**ENGINE_KEYS, **cls.keys}

    def build_model(self) -> nn.Module:
        """The network, on the CPU in float32."""
        raise NotImplementedError

    def build_train_set(self, length: int) -> Dataset:
        """The training set of ``length`` samples; it must have ``set_epoch(epoch)``."""
        raise NotImplementedError

    def build_val_sets(self) -> Sequence[ValSet]:
        """Validation sets (may be empty)."""
        return []

    def train_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        """Forward pass and loss for one batch (already on ``ctx.device``); no backward."""
        raise NotImplementedError

    def val_step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> ValOutput:
        """Metrics of one validation batch (model in eval mode, gradients off)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- building blocks


def lr_at_epoch(epoch: int, base: float, lr_min: float, warmup: int, epochs: int) -> float:
    """Learning rate used during 0-based ``epoch`` (the reference's schedule).

    Warm-up: base * (epoch + 1) / warmup for epoch < warmup. Then cosine from base down to
    lr_min over the remaining epochs: lr_min + (base - lr_min) * (1 + cos(pi k / T)) / 2 with
    k = epoch - warmup, T = epochs - warmup.
    """
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    span = max(epochs - warmup, 1)
    return lr_min + (base - lr_min) * (1 + math.cos(math.pi * (epoch - warmup) / span)) / 2


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch that follows ``lr_at_epoch``."""
    def factor(epoch: int) -> float:
        return lr_at_epoch(epoch, cfg.lr, cfg.lr_min, cfg.warmup_epochs, cfg.epochs) / cfg.lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_groups(model: nn.Module, cfg: Mapping[str, Any]) -> dict[str, tuple[list, float]]:
    """Parameter groups for gradient clipping: name -> (parameters, max L2 norm).

    For X in R, S, K with config key ``clip_grad_X`` set, the parameters whose lower-cased name
    contains 'xnet'. Parameters in no such group form group 'other', never clipped (inf).
    """
    groups: dict[str, tuple[list, float]] = {}
    taken: set[int] = set()
    named = list(unwrap(model).named_parameters())
    for sub in SUB_NETWORKS:
        limit = cfg.get(f"clip_grad_{sub}")
        if limit is None:
            continue
        params = [p for n, p in named if f"{sub.lower()}net" in n.lower()]
        if params:
            groups[sub] = (params, float(limit))
            taken.update(id(p) for p in params)
    rest = [p for _, p in named if id(p) not in taken]
    if rest:
        groups["other"] = (rest, math.inf)
    return groups


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move the tensors of a batch (tensor, list / tuple / dict of them) to ``device``."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def one_line(err: BaseException) -> str:
    """The last non-empty line of an error message. DataLoader workers wrap errors in tracebacks
    whose last line is ``module.ErrorClass: message``; that prefix is dropped."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    return re.sub(r"^(?:\w+\.)*\w*(?:Error|Exception): ", "", lines[-1])


def _plain(value: Any) -> Any:
    """Config values as JSON / ``weights_only``-safe values (paths become strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _grid(images: torch.Tensor) -> torch.Tensor:
    from torchvision.utils import make_grid
    images = images.detach()[:8].float().cpu()
    return make_grid(images, nrow=min(4, images.shape[0]), normalize=True, scale_each=True)


class _TqdmHandler(logging.StreamHandler):
    """Log records printed through ``tqdm.write`` so that they do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


@contextlib.contextmanager
def _logging_to(log_file: Path | None):
    """Send ``LOGGER`` to stdout and ``log_file`` (None: no output) for the duration of a run."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers += [_TqdmHandler(), file_handler]
    else:
        handlers.append(logging.NullHandler())
    old_level, old_propagate = LOGGER.level, LOGGER.propagate
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    for h in handlers:
        LOGGER.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            LOGGER.removeHandler(h)
            h.close()
        LOGGER.setLevel(old_level)
        LOGGER.propagate = old_propagate


@contextlib.contextmanager
def _deterministic(enabled: bool):
    """``torch.use_deterministic_algorithms(enabled)`` for the duration of a run."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled == previous:  # switching costs seconds (it imports the compiler stack)
        yield
        return
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


# --------------------------------------------------------------------------- the trainer


@dataclass
class TrainResult:
    """Outcome of ``train``: one dict per finished epoch (means of the loss terms, validation
    metrics, learning rate, time), the global iteration count, the best validation score (or
    None) and the run folder."""

    history: list[dict]
    iteration: int
    best: float | None
    save_dir: Path


class Trainer:
    """One training run of a ``Task`` in this process (one rank of a DDP run)."""

    def __init__(self, task: Task, env: DistEnv):
        self.task, self.cfg, self.env = task, task.cfg, env
        cfg = self.cfg
        if cfg.batch_size % env.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the "
                              f"{env.world_size} processes")
        if cfg.lr <= 0:
            raise ConfigError(f"config key 'lr': must be > 0, got {cfg.lr}")
        self.save_dir = Path(cfg.save_dir)
        self.ckpt_dir = self.save_dir / "checkpoints"
        self.resume_from = self._resume_path()
        self.local_batch = cfg.batch_size // env.world_size

        seed_everything(cfg.seed)
        self.model = task.build_model().to(env.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        seed_everything(cfg.seed + env.rank)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.groups = clip_groups(self.model, cfg)

        self.train_set = task.build_train_set(cfg.iters_per_epoch * cfg.batch_size)
        self.val_sets = list(task.build_val_sets()) if cfg.val_freq else []
        self.sampler = ResumableSampler(self.train_set, env.world_size, env.rank, cfg.seed)
        workers = cfg.num_workers // env.world_size
        self.loader = DataLoader(self.train_set, batch_size=self.local_batch, sampler=self.sampler,
                                 num_workers=workers, prefetch_factor=cfg.prefetch_factor if workers else None,
                                 pin_memory=env.device.type == "cuda", drop_last=False,
                                 generator=torch.Generator())

        self.epoch = 0
        self.iter_in_epoch = 0
        self.iteration = 0
        self.bad_steps = 0
        self.best: float | None = None
        self.history: list[dict] = []
        self.sums: dict[str, float] = {}
        self.writer = None
        self._resumed_from: dict | None = None
        if self.resume_from is not None:
            self._load(self.resume_from)
        if env.distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    # ---- set-up helpers

    def _resume_path(self) -> Path | None:
        resume = self.cfg.resume
        latest = self.ckpt_dir / "latest.pth"
        if resume == "auto":
            return latest if latest.is_file() else None
        if resume:
            path = Path(resume)
            if not path.is_file():
                raise ConfigError(f"--resume: checkpoint not found: {resume}")
            return path
        if latest.is_file():
            raise ConfigError(f"{self.save_dir} already holds a run ({latest}); pass --resume auto "
                              f"to continue it, or choose another --save_dir")
        return None

    def _load(self, path: Path) -> None:
        state = load_training_state(path)
        model = unwrap(self.model)
        try:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"{path} does not fit this model/config: {one_line(err)}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.iter_in_epoch = state["epoch"], state["iter_in_epoch"]
        self.iteration, self.bad_steps = state["iteration"], state["bad_steps"]
        self.best, self.history, self.sums = state["best"], list(state["history"]), dict(state["sums"])
        rng = state["rng"]
        if len(rng) == self.env.world_size:
            set_rng_state(rng[self.env.rank])
        else:
            seed_everything(self.cfg.seed + self.env.rank + 7919 * self.iteration)
        # what the run that wrote the checkpoint looked like, logged once logging is set up
        self._resumed_from = {"config": state["config"], "world_size": state["sampler"]["world_size"],
                              "rng_ranks": len(rng)}

    def _state(self, rng: list) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "iter_in_epoch": self.iter_in_epoch,
            "iteration": self.iteration,
            "sampler": {"seed": self.cfg.seed, "epoch": self.epoch,
                        "position": self.iter_in_epoch * self.local_batch,
                        "world_size": self.env.world_size},
            "bad_steps": self.bad_steps,
            "best": self.best,
            "history": self.history,
            "sums": self.sums,
            "rng": rng,
            "config": {k: _plain(v) for k, v in self.cfg.items()},
        }

    def save(self, best: bool = False) -> None:
        """Write ``checkpoints/latest.pth`` (and ``best.pth`` with ``best``) with the RNG states
        of every rank; collective: every rank calls it, rank 0 writes."""
        rng = all_gather_objects(self.env, get_rng_state())
        if not self.env.is_main:
            return
        state = self._state(rng)
        save_training_state(state, self.ckpt_dir / "latest.pth")
        if best:
            save_training_state(state, self.ckpt_dir / "best.pth")

    # ---- logging helpers

    def _log_start(self) -> None:
        cfg, env = self.cfg, self.env
        model = unwrap(self.model)
        counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
        total = sum(p.numel() for p in model.parameters())
        LOGGER.info("task %s on %s, %d process(es), global batch %d (%d per process)",
                    self.task.name, env.device, env.world_size, cfg.batch_size, self.local_batch)
        LOGGER.info("parameters: %.2fM total (%s)", total / 1e6,
                    ", ".join(f"{n} {c / 1e6:.2f}M" for n, c in counts.items()))
        LOGGER.info("config %s: %s", cfg.source,
                    ", ".join(f"{k}={_plain(v)}" for k, v in cfg.items()))
        if self.resume_from is not None:
            before = self._resumed_from
            LOGGER.info("resumed from %s at epoch %d, iteration %d of the epoch (global %d)",
                        self.resume_from, self.epoch + 1, self.iter_in_epoch, self.iteration)
            changed = [k for k, v in before["config"].items() if k in cfg and _plain(cfg[k]) != v
                       and k not in ("resume", "save_dir")]
            if changed:
                LOGGER.warning("config differs from the checkpoint's in: %s", ", ".join(changed))
            if before["rng_ranks"] != env.world_size or before["world_size"] != env.world_size:
                LOGGER.warning("checkpoint written by %d process(es), resumed with %d: the rest of "
                               "the run is not an exact continuation", before["world_size"], env.world_size)
            if self.epoch >= cfg.epochs:
                LOGGER.info("the run had already finished its %d epochs", cfg.epochs)
        else:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps({k: _plain(v) for k, v in cfg.items()}, indent=2)
            (self.save_dir / "config.json").write_text(text + "\n", encoding="utf-8")

    def _images(self, prefix: str, visuals: Visuals) -> None:
        for name, images in visuals().items():
            self.writer.add_image(f"{prefix}/{name}", _grid(images), self.iteration)

    # ---- training

    def _ctx(self, val_set: str | None = None) -> StepContext:
        return StepContext(self.env.device, self.epoch, self.iteration, self.env.rank,
                           self.env.world_size, val_set, self.cfg.bf16)

    def _step(self, batch: Batch) -> tuple[StepOutput, dict[str, torch.Tensor], bool]:
        """One optimisation step; returns the output, pre-clip gradient norms and whether it ran."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.task.train_step(self.model, batch, self._ctx())
        out.loss.backward()
        norms = {name: nn.utils.clip_grad_norm_(params, limit)
                 for name, (params, limit) in self.groups.items()}
        checks = torch.stack([out.loss.detach().float(), *(n.float() for n in norms.values())])
        bad = self.env.all_reduce((~torch.isfinite(checks)).any().float(), op=dist.ReduceOp.MAX)
        ok = not bool(bad.item())
        if ok:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return out, norms, ok

    def _train_epoch(self, bar: tqdm, n_iters: int, lr: float) -> None:
        """The remaining iterations of the current epoch (``n_iters`` in all, at learning rate ``lr``)."""
        cfg, env = self.cfg, self.env
        self.train_set.set_epoch(self.epoch)
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.iter_in_epoch * self.local_batch)
        self.model.train()
        for batch in self.loader:
            batch = to_device(batch, env.device, cfg.channels_last)
            out, norms, ok = self._step(batch)
            self.iteration += 1
            self.iter_in_epoch += 1
            if ok:
                self.bad_steps = 0
                values = {"loss": out.loss, **out.terms}
                self._accumulate(values)
            else:
                self.bad_steps += 1
                LOGGER.warning("epoch %d iteration %d: NaN/inf loss or gradient, step skipped (%d in a row)",
                               self.epoch + 1, self.iter_in_epoch, self.bad_steps)
                if self.bad_steps >= cfg.max_bad_steps:
                    raise TrainingError(f"stopped: NaN/inf loss or gradients for {self.bad_steps} steps in a "
                                        f"row (epoch {self.epoch + 1}, iteration {self.iter_in_epoch}); "
                                        f"lower lr or check the data")
            bar.update(1)
            if ok and (self.iteration % cfg.print_freq == 0 or self.iter_in_epoch == 1):
                self._log_step(values, norms, lr, n_iters, bar)
            if env.is_main and ok and cfg.image_freq and self.iteration % cfg.image_freq == 0 and out.visuals:
                self._images("train", out.visuals)
            if cfg.save_freq and self.iteration % cfg.save_freq == 0 and self.iter_in_epoch < n_iters:
                self.save()

    def _accumulate(self, values: Mapping[str, torch.Tensor]) -> None:
        """Add one step's values to the epoch sums (kept on the host as exact float sums)."""
        stacked = torch.stack([v.detach().float() for v in values.values()]).double().cpu().tolist()
        for name, v in zip(values, stacked):
            self.sums[name] = self.sums.get(name, 0.0) + v
        self.sums["_count"] = self.sums.get("_count", 0.0) + 1

    def _log_step(self, values: Mapping[str, torch.Tensor], norms: Mapping[str, torch.Tensor],
                  lr: float, n_iters: int, bar: tqdm) -> None:
        """Log line, progress-bar fields and TensorBoard scalars of one step (collective: the
        values are averaged over the processes, i.e. over the global batch)."""
        stacked = self.env.all_reduce(torch.stack([v.detach().float() for v in values.values()]))
        stacked /= self.env.world_size
        if not self.env.is_main:
            return
        scalars = dict(zip(values, stacked.tolist()))
        grads = {k: float(v) for k, v in norms.items()}
        for k, v in scalars.items():
            self.writer.add_scalar(f"train/{k}", v, self.iteration)
        for k, v in grads.items():
            self.writer.add_scalar(f"train/grad_norm_{k}", v, self.iteration)
        self.writer.add_scalar("train/lr", lr, self.iteration)
        bar.set_postfix({**{k: f"{v:.3g}" for k, v in scalars.items()}, "lr": f"{lr:.2e}"}, refresh=False)
        clip = ", ".join(f"{k}={v:.2e}/{self.groups[k][1]:.0e}" for k, v in grads.items() if k != "other")
        LOGGER.info("[epoch %d/%d] iter %d/%d (global %d) %s | grad %s | lr %.2e", self.epoch + 1,
                    self.cfg.epochs, self.iter_in_epoch, n_iters, self.iteration,
                    " ".join(f"{k}={v:+.4e}" for k, v in scalars.items()), clip or "-", lr)

    def _epoch_means(self) -> dict[str, float]:
        names = sorted(self.sums)
        totals = self.env.all_reduce(torch.tensor([self.sums[n] for n in names], dtype=torch.float64))
        values = dict(zip(names, totals.tolist()))
        count = values.pop("_count", 0.0)
        return {f"train/{k}": v / count for k, v in values.items()} if count else {}

    def validate(self) -> dict[str, float]:
        """Metrics of every validation set (each rank evaluates a share; results are summed)."""
        model = unwrap(self.model)
        model.eval()
        metrics = self.task.val_metrics
        results = {}
        for vs in self.val_sets:
            share = Subset(vs.dataset, range(self.env.rank, len(vs.dataset), self.env.world_size))
            loader = DataLoader(share, batch_size=vs.batch_size, shuffle=False, num_workers=0)
            totals = torch.zeros(len(metrics) + 1, dtype=torch.float64)
            logged = 0
            ctx = self._ctx(vs.name)
            with torch.no_grad():
                for batch in loader:
                    batch = to_device(batch, self.env.device, self.cfg.channels_last)
                    out = self.task.val_step(model, batch, ctx)
                    n = len(batch[0])
                    totals += torch.tensor([out.metrics[m] * n for m in metrics] + [n], dtype=torch.float64)
                    if self.env.is_main and out.visuals and logged < self.cfg.val_images:
                        self._images(f"val_{vs.name}/{logged}", out.visuals)
                        logged += n
            totals = self.env.all_reduce(totals)
            for i, m in enumerate(metrics):
                results[f"val/{vs.name}/{m}"] = totals[i].item() / max(totals[-1].item(), 1)
        model.train()
        return results

    def fit(self) -> TrainResult:
        """Train to the last epoch; returns the ``TrainResult``."""
        cfg, env = self.cfg, self.env
        if env.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self._log_start()
            purge = self.iteration if self.resume_from is not None else None
            self.writer = SummaryWriter(str(self.save_dir / "tb"), purge_step=purge)
        try:
            while self.epoch < cfg.epochs:
                self._run_epoch()
        finally:
            if self.writer is not None:
                self.writer.close()
        return TrainResult(self.history, self.iteration, self.best, self.save_dir)

    def _run_epoch(self) -> None:
        """Train the rest of the epoch, validate, step the scheduler, save and export."""
        cfg, env = self.cfg, self.env
        start, done_before = time.perf_counter(), self.iter_in_epoch
        lr = self.optimizer.param_groups[0]["lr"]
        n_iters = math.ceil(self.sampler.num_samples / self.local_batch)
        with tqdm(total=n_iters, initial=self.iter_in_epoch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                  disable=None if env.is_main else True, dynamic_ncols=True, leave=False) as bar:
            self._train_epoch(bar, n_iters, lr)
        train_time = time.perf_counter() - start
        record = {"epoch": self.epoch + 1, "lr": lr, **self._epoch_means()}
        last = self.epoch + 1 == cfg.epochs
        if self.val_sets and ((self.epoch + 1) % cfg.val_freq == 0 or last):
            record.update(self.validate())
        speed = (self.iter_in_epoch - done_before) / max(train_time, 1e-9)
        record.update({"time_s": time.perf_counter() - start, "it_per_s": speed})
        self.scheduler.step()
        self.epoch += 1
        self.iter_in_epoch = 0
        self.sums = {}
        self.history.append(record)
        score = self._score(record)
        improved = score is not None and (self.best is None or score > self.best)
        if improved:
            self.best = score
        self.save(best=improved)
        if env.is_main:
            self._log_epoch(record, improved)
            models = self.save_dir / "models"
            export_model(self.model, models / "model_last.pth")
            if improved:
                export_model(self.model, models / "model_best.pth")

    def _score(self, record: Mapping[str, float]) -> float | None:
        key = self.task.val_metrics[0] if self.task.val_metrics else None
        values = [record[f"val/{vs.name}/{key}"] for vs in self.val_sets if f"val/{vs.name}/{key}" in record]
        return sum(values) / len(values) if values else None

    def _log_epoch(self, record: Mapping[str, float], improved: bool) -> None:
        for k, v in record.items():
            if k != "epoch":
                tag = k if k.startswith("val/") else f"epoch/{k}"
                self.writer.add_scalar(tag, v, self.iteration)
        self.writer.flush()
        parts = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch")
        LOGGER.info("epoch %d/%d done: %s%s", record["epoch"], self.cfg.epochs, parts,
                    " (best so far)" if improved else "")


# --------------------------------------------------------------------------- entry points


def train(task_cls: type[Task], cfg: Config, device: str | None = None) -> TrainResult:
    """Run a whole training (or this rank's part of a ``torchrun`` run) with a checked config.

    Raises the errors of ``ERRORS`` for bad input; the process group, log handlers and the
    determinism flag are released on every exit path.
    """
    env = setup_distributed(device)
    try:
        log_file = Path(cfg.save_dir) / "train.log" if env.is_main else None
        with _logging_to(log_file), _deterministic(cfg.deterministic):
            if env.device.type == "cuda":
                torch.backends.cudnn.benchmark = not cfg.deterministic
            task = task_cls(cfg)
            return Trainer(task, env).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def build_parser(task_cls: type[Task], prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of a trainer: --config, --save_dir, --resume, --opt, --device."""
    parser = argparse.ArgumentParser(
        prog=prog, description=task_cls.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set them in the file or with --opt KEY=VALUE):\n"
               + describe_schema(task_cls.schema())
               + "\n\nseveral processes: torchrun --nproc_per_node=N <script> ... (DDP; NCCL on GPU, "
                 "gloo on CPU)")
    parser.add_argument("--config", default=task_cls.default_config,
                        help="JSON config file, '#' comments allowed (default: %(default)s)")
    parser.add_argument("--save_dir", default=None,
                        help="folder for checkpoints, model exports, logs and TensorBoard events "
                             "(default: the config's save_dir)")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="continue from a training checkpoint; 'auto' picks "
                             "<save_dir>/checkpoints/latest.pth when it exists, else starts afresh")
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --opt lr=2e-4 "
                             "--opt n_feat=[32,64] --opt train_dirs=a,b")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (default: CUDA when available)")
    return parser


def main(task_cls: type[Task], argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry point of a trainer; returns the exit status.

    Bad input (config, paths, checkpoints, images) and a training stopped by NaNs print one
    line ``<prog>: error: ...`` on stderr and return 1; argparse usage errors exit with 2.
    """
    parser = build_parser(task_cls, prog)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, task_cls.schema(), args.opt)
        cli = {k: v for k, v in (("save_dir", args.save_dir), ("resume", args.resume)) if v is not None}
        train(task_cls, cfg.replace(**cli), device=args.device)
    except ERRORS as err:
        print(f"{parser.prog}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0
