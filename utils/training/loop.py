"""The training loop of every trainer: the task's optimiser and learning-rate schedule per epoch
(``optim``: Adam with warm-up + cosine decay by default), gradient clipping per sub-network,
optional bf16 autocast and channels-last, skipping NaN/inf steps, validation, checkpoints with
exact resume (``state``), logs (``logs``), DDP (``distributed``).

Steps that need randomness (MixUp, reparameterisation) use the global torch RNG: it is seeded per
rank and saved in checkpoints. Files under ``save_dir``: ``checkpoints/latest.pth`` and
``checkpoints/best.pth`` (full training state), ``models/model_last.pth`` and
``models/model_best.pth`` (weights only; with ``ema_decay`` the moving average of the weights,
which is also what validation scores), ``tb/`` (TensorBoard events), ``train.log``,
``config.json`` (the checked config of the first run) and ``image_check.json`` (the verdicts of
the start-up check of the training images).

What a run guarantees: one run per ``save_dir`` (rank 0 holds ``utils.locking.folder_lock``; the
temporary files of writes killed mid-way are removed at start); no checkpoint is written while
steps are being skipped for NaN/inf or when the weights are not finite, so ``latest.pth`` always
holds the last good state; a full disk or a lost DDP process stops the run with one line; a time
limit or a stop signal (``stopping``) ends it between two steps with ``latest.pth`` written at that
iteration and ``model_last.pth`` exported from it.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from networks import load_checkpoint
from utils.config import Config, ConfigError
from utils.devices import native_bf16, set_tf32
from utils.errors import UserError, user_errors
from utils.image_io import remove_stale_temporaries
from utils.locking import FolderLockError, folder_lock
from utils.seeding import get_rng_state, seed_everything

from .distributed import (DistEnv, DistributedError, ResumableSampler, all_gather_objects, lost_peer, others,
                          setup_distributed, workers_per_process)
from .logs import LOGGER, RunLog, logging_to
from .optim import SCHEDULE_KEYS
from .state import (TrainingState, clear_run, config_changes, export_model, read_weights, remove_unused_folder,
                    resume_path, unwrap, weight_average)
from .stopping import StopRequest, describe, ignore_stop_signals
from .task import IMAGE_CHECK_CACHE, Batch, StepContext, StepOutput, Task


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. NaN/inf for too many steps); the message is one line."""


class _Halt(Exception):
    """Raised between two steps when the processes agreed to stop (``stopping``); ``code``: why."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def clip_norm(params: list, limit: float) -> torch.Tensor:
    """Clip the gradients of ``params`` (non-empty) to L2 norm ``limit`` (``clip_grad_norm_``); returns
    their norm before clipping, a scalar on the parameters' device: 0 there for a group none of whose
    parameters has a gradient (``clip_grad_norm_`` would return it on the CPU)."""
    if all(p.grad is None for p in params):
        return torch.zeros((), device=params[0].device)
    return nn.utils.clip_grad_norm_(params, limit)


def clip_groups(model: nn.Module, cfg: Mapping[str, Any]) -> dict[str, tuple[list, float]]:
    """Parameter groups for gradient clipping: name -> (parameters, max L2 norm).

    For every sub-network X of the model's ``parts()`` whose config key ``clip_grad_X`` is set, its
    parameters. Parameters in no such group form group 'other', never clipped (inf).
    """
    net = unwrap(model)
    parts = net.parts() if hasattr(net, "parts") else {}
    groups: dict[str, tuple[list, float]] = {}
    for name, part in parts.items():
        limit = cfg.get(f"clip_grad_{name}")
        params = list(part.parameters())
        if limit is not None and params:
            groups[name] = (params, float(limit))
    taken = {id(p) for params, _ in groups.values() for p in params}
    rest = [p for p in net.parameters() if id(p) not in taken]
    if rest:
        groups["other"] = (rest, math.inf)
    return groups


class KeyedSamples(Dataset):
    """The training set ``data`` whose samples' ValueErrors become ConfigErrors of config key ``key``
    (see ``Task.data_key``); ``set_epoch`` and the length are ``data``'s."""

    def __init__(self, data: Dataset, key: str):
        self.data, self.key = data, key

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to ``data``."""
        self.data.set_epoch(epoch)

    def __getitem__(self, index: int):
        with user_errors(ValueError, prefix=f"config key {self.key!r}", error=ConfigError):
            return self.data[index]


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


@dataclass
class StepResult:
    """One optimisation step as the loop sees it: the task's ``output``, the gradient ``norms`` per
    clipping group before clipping, whether the step was ``applied`` (False: NaN/inf on some process,
    skipped), ``stop``, the processes' agreed ``stopping`` code (0: go on), and ``overflow``: an fp16
    step skipped because its scaled gradients overflowed (finite loss), after which the gradient scaler
    lowered its scale; not a bad step."""

    output: StepOutput
    norms: dict[str, torch.Tensor]
    applied: bool
    stop: int
    overflow: bool = False


@dataclass
class TrainResult:
    """Outcome of ``train``: one dict per finished epoch (means of the loss terms, validation
    metrics, learning rate, time), the global iteration count, the best validation score (or
    None), the run folder and, for a run stopped before its last epoch, the ``stopping`` code of the
    reason (0: it ran to the end)."""

    history: list[dict]
    iteration: int
    best: float | None
    save_dir: Path
    stopped: int = 0


class Trainer:
    """One training run of a ``Task`` in this process (one rank of a DDP run)."""

    def __init__(self, task: Task, env: DistEnv, model: nn.Module | None, stop: StopRequest):
        """``model``: the network to train, holding its starting weights (``train`` passes the one
        ``initial_model`` filled from ``init_weights``); None: a fresh ``task.build_model()``.
        ``stop``: the time limit and signals this process heeds."""
        self.task, self.cfg, self.env = task, task.cfg, env
        self.stop = stop
        self.step_s = 0.0  # wall time of the last iteration, data loading included
        self.epoch_end_s = 0.0  # the longest epoch end so far (validation, checkpoint, exports)
        self.save_dir = Path(self.cfg.save_dir)
        self.ckpt_dir = self.save_dir / "checkpoints"
        self._set_precision()
        self._check_layout()
        resume_from = resume_path(self.cfg)
        model = self._place_model(model)
        self._set_optimisation(model)
        self._set_data()
        self.resumed = None
        self.saved_at: int | None = None  # the iteration our latest.pth holds, None before it exists
        if resume_from is not None:
            self._resume(resume_from)
        if env.distributed:
            self._wrap_ddp(model)
        self.log = RunLog(self.cfg, self.save_dir)

    def _set_precision(self) -> None:
        """``precision`` ('fp32', 'bf16' or 'fp16', ``precision_choice``; also as the flags ``bf16`` and
        ``fp16``) and ``precision_why`` (for the log), decided by rank 0 for all: a timed probe could tip
        differently on each rank; ``scaler``, the gradient scaler of fp16 training (None otherwise)."""
        choice = precision_choice(self.cfg, self.env.device)
        self.precision, self.precision_why = all_gather_objects(self.env, choice)[0]
        self.bf16, self.fp16 = self.precision == "bf16", self.precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.env.device.type) if self.fp16 else None

    def _check_layout(self) -> None:
        """``local_batch``, this process's share of the batch; raises ConfigError when the batch does
        not split evenly over the processes."""
        cfg, world = self.cfg, self.env.world_size
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
        self.local_batch = cfg.batch_size // world

    def _place_model(self, model: nn.Module | None) -> nn.Module:
        """``model`` (None: a fresh ``task.build_model()``, built from seed ``seed``) on the device, in
        channels-last with config key ``channels_last``; then reseeds the global RNG per rank."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = (model if model is not None else self.task.build_model()).to(self.env.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        seed_everything(cfg.seed + self.env.rank)
        return model

    def _set_optimisation(self, model: nn.Module) -> None:
        """The ``TrainingState`` of ``model``: the task's optimiser and schedule, the moving average with
        ``ema_decay``; and the gradient-clipping groups."""
        cfg, task = self.cfg, self.task
        optimizer = task.build_optimizer(list(model.parameters()))
        ema = weight_average(model, cfg.ema_decay) if cfg.ema_decay else None
        self.state = TrainingState(model, optimizer, task.build_scheduler(optimizer), cfg, self.env.world_size,
                                   self.local_batch, ema=ema, scaler=self.scaler)
        self.groups = clip_groups(model, cfg)

    def _set_data(self) -> None:
        """The training set (its sample errors named by ``Task.data_key``), the validation sets, the
        resumable sampler and the loader."""
        cfg, env, task = self.cfg, self.env, self.task
        task.image_cache = self.save_dir / IMAGE_CHECK_CACHE
        self.train_set = task.build_train_set(cfg.iters_per_epoch * cfg.batch_size)
        if task.data_key is not None:
            self.train_set = KeyedSamples(self.train_set, task.data_key)
        self.val_sets = list(task.build_val_sets()) if cfg.val_freq else []
        self.sampler = ResumableSampler(self.train_set, env.world_size, env.rank, cfg.seed)
        workers = workers_per_process(cfg.num_workers, env.local_world_size)
        self.loader = DataLoader(self.train_set, batch_size=self.local_batch, sampler=self.sampler,
                                 num_workers=workers, prefetch_factor=cfg.prefetch_factor if workers else None,
                                 pin_memory=env.device.type == "cuda", drop_last=False,
                                 worker_init_fn=ignore_stop_signals if workers else None,
                                 generator=torch.Generator())

    def _resume(self, path: Path) -> None:
        """Continue from the checkpoint ``path``: its state, then the config keys changed since (a changed
        schedule applied at once); ``resumed`` says what was resumed, for the log."""
        self.resumed = {"path": path, **self.state.load(path, self.env.rank)}
        changes = config_changes(self.cfg, self.resumed["config"], self.task.fixed_on_resume())
        if any(key in changes for key in SCHEDULE_KEYS):
            self.state.apply_schedule()
        p = self.progress
        self.resumed.update(epoch=p.epoch, iter_in_epoch=p.iter_in_epoch, iteration=p.iteration, changes=changes)
        if path.resolve() == (self.ckpt_dir / "latest.pth").resolve():
            self.saved_at = p.iteration

    def _wrap_ddp(self, model: nn.Module) -> None:
        """Train ``model`` through ``DistributedDataParallel`` (a DDP run)."""
        ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        self.state.model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    @property
    def model(self) -> nn.Module:
        """The model being trained (DDP-wrapped in a DDP run)."""
        return self.state.model

    @property
    def eval_model(self) -> nn.Module:
        """The network that is validated and exported: the moving average of the weights with
        ``ema_decay``, else the trained one (without DDP wrapper)."""
        return self.state.ema.module if self.state.ema is not None else unwrap(self.model)

    @property
    def progress(self):
        """The run's ``state.Progress`` counters."""
        return self.state.progress

    def save(self, best: bool = False) -> bool:
        """Write ``checkpoints/latest.pth`` (and ``best.pth`` with ``best``) with the RNG states of
        every rank, unless the state is not good: steps are being skipped for NaN/inf, or the weights
        hold NaN/inf (then the last good checkpoint is kept and a warning logged). Returns whether it
        wrote. Collective: every rank calls it (the decision is the same on all), rank 0 writes.
        Raises TrainingError when the file cannot be written (e.g. a full disk)."""
        p = self.progress
        finite = all(bool(torch.isfinite(t).all()) for t in unwrap(self.model).state_dict().values()
                     if t.is_floating_point())
        if p.bad_steps or not finite:
            why = f"the last {p.bad_steps} step(s) were skipped" if p.bad_steps else "the weights hold NaN/inf"
            LOGGER.warning("iteration %d: no checkpoint written (%s); %s", p.iteration, why, self._last_good_state())
            return False
        rng = all_gather_objects(self.env, get_rng_state())
        if self.env.is_main:
            try:
                self.state.save(self.ckpt_dir, rng, best)
            except OSError as err:
                raise TrainingError(f"cannot write checkpoint {err.filename or self.ckpt_dir}: {err.strerror or err}; "
                                    f"{self._last_good_state()} - free space, then continue with --resume auto") from None
        self.saved_at = p.iteration
        return True

    def _last_good_state(self) -> str:
        """Which state the checkpoint folder keeps, for messages."""
        if self.saved_at is None:
            return "no checkpoint has been written yet"
        return f"{self.ckpt_dir / 'latest.pth'} keeps the state of iteration {self.saved_at}"

    def _ctx(self, val_set: str | None = None) -> StepContext:
        return StepContext(self.env.device, self.progress.epoch, self.progress.iteration, self.env.rank,
                           self.env.world_size, val_set, self.bf16, self.fp16)

    def _step(self, batch: Batch, next_s: float = 0.0) -> StepResult:
        """One optimisation step. The stop vote rides on the step's one collective; ``next_s`` is the
        expected time to the end of the next step, for the time limit."""
        optimizer = self.state.optimizer
        optimizer.zero_grad(set_to_none=True)
        out = self.task.train_step(self.model, batch, self._ctx())
        scaler = self.state.scaler
        (scaler.scale(out.loss) if scaler is not None else out.loss).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)  # clipping and the checks see the true gradients
        norms = {name: clip_norm(params, limit) for name, (params, limit) in self.groups.items()}
        loss = out.loss.detach().float()
        grads = torch.stack([n.float() for n in norms.values()])
        stop = torch.tensor(float(self.stop.code(next_s)), device=loss.device)
        flags = self.env.all_reduce(torch.stack([(~torch.isfinite(loss)).float(),
                                                 (~torch.isfinite(grads)).any().float(), stop]),
                                    op=dist.ReduceOp.MAX)
        loss_bad, grads_bad, stop_code = flags.tolist()
        ok = not (loss_bad or grads_bad)
        if ok:
            if scaler is not None:
                scaler.step(optimizer)
            else:
                optimizer.step()
            if self.state.ema is not None:
                self.state.ema.update_parameters(unwrap(self.model))
        else:
            optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # after every unscale_; lowers the scale after an overflow
        return StepResult(out, norms, ok, int(stop_code), overflow=scaler is not None and bool(grads_bad and not loss_bad))

    def _train_epoch(self, bar: tqdm, n_iters: int, lr: float) -> None:
        """The remaining iterations of the current epoch (``n_iters`` in all, at learning rate ``lr``)."""
        cfg, env, p = self.cfg, self.env, self.progress
        self.train_set.set_epoch(p.epoch)
        self.sampler.set_epoch(p.epoch)
        self.sampler.set_start(p.iter_in_epoch * self.local_batch)
        self.model.train()
        began = time.perf_counter()
        for batch in self.loader:
            batch = to_device(batch, env.device, cfg.channels_last)
            epoch_end_due = p.iter_in_epoch + 2 >= n_iters  # within the next step
            result = self._step(batch, self.step_s + (self.epoch_end_s if epoch_end_due else 0.0))
            self._count(result)
            bar.update(1)
            if result.applied:
                self._report(result, lr, n_iters, bar)
            if cfg.save_freq and p.iteration % cfg.save_freq == 0 and p.iter_in_epoch < n_iters:
                self.save()
            if result.stop:
                self._halt(result.stop)
            now = time.perf_counter()
            self.step_s, began = now - began, now

    def _count(self, result: StepResult) -> None:
        """Advance the counters past a step: an applied one adds its values to the epoch sums, a skipped
        one is counted and warned about. Raises TrainingError after ``max_bad_steps`` skipped in a row."""
        cfg, p = self.cfg, self.progress
        p.iteration += 1
        p.iter_in_epoch += 1
        if result.applied:
            p.bad_steps = 0
            self._accumulate(result.output.scalars())
            return
        if result.overflow:
            LOGGER.info("epoch %d iteration %d: fp16 gradients overflowed, step skipped, gradient scale lowered to %g",
                        p.epoch + 1, p.iter_in_epoch, self.state.scaler.get_scale())
            return
        p.bad_steps += 1
        LOGGER.warning("epoch %d iteration %d: NaN/inf loss or gradient, step skipped (%d in a row)",
                       p.epoch + 1, p.iter_in_epoch, p.bad_steps)
        if p.bad_steps >= cfg.max_bad_steps:
            raise TrainingError(f"stopped: NaN/inf loss or gradients for {p.bad_steps} steps in a "
                                f"row (epoch {p.epoch + 1}, iteration {p.iter_in_epoch}); {self._last_good_state()}: "
                                f"lower lr (e.g. --resume auto --opt lr={cfg.lr / 2:g}) or check the data")

    def _report(self, result: StepResult, lr: float, n_iters: int, bar: tqdm) -> None:
        """The log line and scalars of an applied step when due (``print_freq``, and an epoch's first
        step), its TensorBoard images when due (``image_freq``)."""
        cfg, p, out = self.cfg, self.progress, result.output
        if p.iteration % cfg.print_freq == 0 or p.iter_in_epoch == 1:
            self._log_step(out.scalars(), result.norms, lr, n_iters, bar)
        if self.env.is_main and cfg.image_freq and p.iteration % cfg.image_freq == 0 and out.visuals:
            self.log.images("train", out.visuals(), p.iteration)

    def _halt(self, code: int) -> None:
        """End the run after the step the processes voted to stop at (``code``: why): a checkpoint at this
        iteration unless one is there, ``model_last`` exported from it, then ``_Halt``."""
        if self.saved_at != self.progress.iteration:
            self.save()
        if self.saved_at == self.progress.iteration:
            self._export()
        raise _Halt(code)

    def _accumulate(self, values: Mapping[str, torch.Tensor]) -> None:
        """Add one step's values to the epoch sums (kept on the host as exact float sums)."""
        sums = self.progress.sums
        stacked = torch.stack([v.detach().float() for v in values.values()]).cpu().double().tolist()  # MPS: no float64
        for name, v in zip(values, stacked):
            sums[name] = sums.get(name, 0.0) + v
        sums["_count"] = sums.get("_count", 0.0) + 1

    def _log_step(self, values: Mapping[str, torch.Tensor], norms: Mapping[str, torch.Tensor],
                  lr: float, n_iters: int, bar: tqdm) -> None:
        """Log one step (collective: the values are averaged over the processes, i.e. over the
        global batch; rank 0 writes)."""
        stacked = self.env.all_reduce(torch.stack([v.detach().float() for v in values.values()]))
        stacked /= self.env.world_size
        if not self.env.is_main:
            return
        p = self.progress
        scalars = dict(zip(values, stacked.tolist()))
        bar.set_postfix({**{k: f"{v:.3g}" for k, v in scalars.items()}, "lr": f"{lr:.2e}"}, refresh=False)
        where = f"[epoch {p.epoch + 1}/{self.cfg.epochs}] iter {p.iter_in_epoch}/{n_iters} (global {p.iteration})"
        self.log.step(scalars, {k: float(v) for k, v in norms.items()},
                      {k: limit for k, (_, limit) in self.groups.items()}, lr, where, p.iteration)

    def _epoch_means(self) -> dict[str, float]:
        sums = self.progress.sums
        names = sorted(sums)
        totals = self.env.all_reduce(torch.tensor([sums[n] for n in names], dtype=torch.float64))
        values = dict(zip(names, totals.tolist()))
        count = values.pop("_count", 0.0)
        return {f"train/{k}": v / count for k, v in values.items()} if count else {}

    def validate(self) -> dict[str, float]:
        """Every metric of every validation set, averaged over its samples (each rank evaluates a
        share; the sums are reduced over the ranks) for ``eval_model``."""
        model = self.eval_model
        model.eval()
        results = {}
        for vs in self.val_sets:
            share = Subset(vs.dataset, range(self.env.rank, len(vs.dataset), self.env.world_size))
            loader = DataLoader(share, batch_size=vs.batch_size, shuffle=False, num_workers=0)
            sums: dict[str, float] = {}
            count, logged = 0, 0
            ctx = self._ctx(vs.name)
            with torch.no_grad():
                for batch in loader:
                    batch = to_device(batch, self.env.device, self.cfg.channels_last)
                    out = self.task.val_step(model, batch, ctx)
                    n = len(batch[0])
                    for name, value in out.metrics.items():
                        sums[name] = sums.get(name, 0.0) + value * n
                    count += n
                    if self.env.is_main and out.visuals and logged < self.cfg.val_images:
                        self.log.images(f"val_{vs.name}/{logged}", out.visuals(), self.progress.iteration)
                        logged += n
            names = sorted(set().union(*all_gather_objects(self.env, set(sums))))  # a rank may have no batch
            totals = self.env.all_reduce(torch.tensor([sums.get(m, 0.0) for m in names] + [count],
                                                      dtype=torch.float64))
            for i, m in enumerate(names):
                results[f"val/{vs.name}/{m}"] = totals[i].item() / max(totals[-1].item(), 1)
        model.train()
        return results

    def fit(self) -> TrainResult:
        """Train to the last epoch; returns the ``TrainResult``."""
        env, p = self.env, self.progress
        if env.is_main:
            self.log.start(self.task.label(), unwrap(self.model), env.device, env.world_size, self.local_batch,
                           self.resumed)
            LOGGER.info("precision: %s (%s)", PRECISION_NAMES[self.precision], self.precision_why)
            self.log.open(p.iteration if self.resumed is not None else None)
            if p.epoch >= self.cfg.epochs:
                LOGGER.info("the run has finished its %d epochs: nothing to train (a larger 'epochs' trains on)",
                            self.cfg.epochs)
        stopped = 0
        try:
            while self.progress.epoch < self.cfg.epochs:
                self._run_epoch()
        except _Halt as halt:
            stopped = halt.code
            if env.is_main:
                exported = f" and {self.save_dir / 'models' / 'model_last.pth'} its weights" \
                    if self.saved_at == p.iteration else ""
                LOGGER.warning("stopped by %s after iteration %d of epoch %d/%d (global %d); %s%s: continue with "
                               "--resume auto", describe(stopped), p.iter_in_epoch, p.epoch + 1, self.cfg.epochs,
                               p.iteration, self._last_good_state(), exported)
        except RuntimeError as err:
            if not (env.distributed and lost_peer(err)):
                raise
            raise DistributedError(f"rank {env.rank}: {others(env.rank, env.world_size)} did not answer within "
                                   f"ddp_timeout_s={self.cfg.ddp_timeout_s:g} s (iteration {p.iteration + 1}, epoch "
                                   f"{p.epoch + 1}): it stalled or died; the run stops ({self._last_good_state()})") from None
        finally:
            self.log.close()
        p = self.progress
        return TrainResult(p.history, p.iteration, p.best, self.save_dir, stopped)

    def _run_epoch(self) -> None:
        """Train the rest of the epoch, validate, step the scheduler, save and export."""
        cfg, env, p = self.cfg, self.env, self.progress
        start, done_before = time.perf_counter(), p.iter_in_epoch
        lr = self.state.optimizer.param_groups[0]["lr"]
        n_iters = math.ceil(self.sampler.num_samples / self.local_batch)
        with tqdm(total=n_iters, initial=p.iter_in_epoch, desc=f"epoch {p.epoch + 1}/{cfg.epochs}",
                  disable=None if env.is_main else True, dynamic_ncols=True, leave=False) as bar:
            self._train_epoch(bar, n_iters, lr)
        end_start = time.perf_counter()
        train_time = end_start - start
        record = {"epoch": p.epoch + 1, "lr": lr, **self._epoch_means()}
        last = p.epoch + 1 == cfg.epochs
        if self.val_sets and ((p.epoch + 1) % cfg.val_freq == 0 or last):
            record.update(self.validate())
        speed = (p.iter_in_epoch - done_before) / max(train_time, 1e-9)
        record.update({"time_s": time.perf_counter() - start, "it_per_s": speed})
        self.state.scheduler.step()
        p.epoch += 1
        p.iter_in_epoch = 0
        p.sums = {}
        p.history.append(record)
        score = self._score(record)
        improved = score is not None and (p.best is None or score > p.best)
        if improved:
            p.best = score
        saved = self.save(best=improved)
        if env.is_main:
            self.log.epoch(record, improved, p.iteration)
        if saved:
            self._export(best=improved)
        self.epoch_end_s = max(self.epoch_end_s, time.perf_counter() - end_start)

    def _export(self, best: bool = False) -> None:
        """Rank 0 writes ``eval_model``'s weights to ``models/model_last.pth`` (and ``model_best.pth``
        with ``best``). Raises TrainingError when a file cannot be written."""
        if not self.env.is_main:
            return
        models = self.save_dir / "models"
        try:
            export_model(self.eval_model, models / "model_last.pth")
            if best:
                export_model(self.eval_model, models / "model_best.pth")
        except OSError as err:
            raise TrainingError(f"cannot write {err.filename or models}: {err.strerror or err}; "
                                f"{self._last_good_state()} - free space, then continue with --resume auto") from None

    def _score(self, record: Mapping[str, float]) -> float | None:
        key = self.task.best_metric
        values = [record[f"val/{vs.name}/{key}"] for vs in self.val_sets if f"val/{vs.name}/{key}" in record]
        return sum(values) / len(values) if values else None


@contextlib.contextmanager
def _run_folder(env: DistEnv, save_dir: Path) -> Iterator[list[Path]]:
    """Hold ``save_dir`` for the run: rank 0 takes its folder lock (``utils.locking``) and removes the
    temporary files that writes killed mid-way left in it, ``checkpoints/`` and ``models/``; yields
    the removed paths. Collective: a refusal (another run holds the folder, it cannot be written)
    reaches every rank, which all raise FolderLockError with its one line."""
    if save_dir.exists() and not save_dir.is_dir():
        raise ConfigError(f"--save_dir {save_dir} is a file; choose a folder")
    with contextlib.ExitStack() as stack:
        refusal, removed = None, []
        if env.is_main:
            try:
                stack.enter_context(folder_lock(save_dir, what="training run"))
                removed = [path for folder in (save_dir, save_dir / "checkpoints", save_dir / "models")
                           for path in remove_stale_temporaries(folder)]
            except FolderLockError as err:
                refusal = str(err)
        refusal = all_gather_objects(env, refusal)[0]
        if refusal:
            raise FolderLockError(refusal)
        yield removed


PRECISION_NAMES = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + gradient scaler"}
"""How the log names each training precision."""


def precision_choice(cfg: Mapping[str, Any], device: torch.device) -> tuple[str, str]:
    """The precision training on ``device`` runs its forward passes in, 'fp32', 'bf16' or 'fp16', and
    why (a phrase for the log): config key ``precision`` when set ('auto': bf16 where the device
    computes it natively, else fp32; never fp16), else the older key ``bf16`` (``autocast_choice``)."""
    setting = cfg.get("precision")
    if setting is None:
        bf16, why = autocast_choice(cfg["bf16"], device)
        return ("bf16" if bf16 else "fp32"), why
    if setting == "fp32":
        return "fp32", "precision=fp32"
    if setting == "fp16":
        return "fp16", "precision=fp16" + ("" if device.type == "cuda" else "; slow here, for GPUs without bf16 units")
    native, why = native_bf16(device)
    if setting == "auto":
        hint = "; precision=fp16 would train with a gradient scaler" if device.type == "cuda" and not native else ""
        return ("bf16" if native else "fp32"), f"precision=auto: {why}{hint}"
    return "bf16", "precision=bf16" + ("" if native else f"; slow here, {why}: precision=auto would train in fp32")


def autocast_choice(setting: bool | str, device: torch.device) -> tuple[bool, str]:
    """Whether training on ``device`` runs its forward passes in bf16 autocast for config value
    ``setting`` (True, False or 'auto': where the device computes bf16 natively,
    ``utils.devices.native_bf16``), and why (a phrase for the log)."""
    if setting == "auto":
        bf16, why = native_bf16(device)
        return bf16, f"bf16=auto: {why}"
    if setting and device.type == "cpu":
        native, why = native_bf16(device)
        if not native:
            return True, f"bf16=true; slow here, {why}: bf16=auto would train in fp32"
    return bool(setting), f"bf16={str(bool(setting)).lower()}"


def initial_model(task: Task) -> nn.Module | None:
    """The task's network holding the weights of config key ``init_weights`` for a fresh run, or
    None without the key or when the run resumes (its checkpoint's weights win). Raises
    CheckpointError, one line naming the file, when the file does not fit the network, is damaged
    (its checksum) or stores floating-point weights as integers (``state.read_weights``)."""
    cfg = task.cfg
    if not cfg.init_weights or resume_path(cfg) is not None:
        return None
    model = task.build_model()
    load_checkpoint(model, cfg.init_weights, read_weights(model, cfg.init_weights))
    return model


CUDA_DETERMINISM = {
    True: "deterministic: true on CUDA: deterministic kernels only, cuDNN autotuning off (slower); an operation "
          "without a deterministic CUDA kernel stops the run with PyTorch's error",
    False: "deterministic: false on CUDA: resume restores the data order and RNG states exactly, but autotuned "
           "cuDNN kernels and atomic adds make the numbers differ slightly between reruns (deterministic: true "
           "for bit-equal ones)",
}
"""The start-up line of a CUDA run saying what its ``deterministic`` setting gives up."""


def train(task_cls: type[Task], cfg: Config, device: str | None = None,
          stop: StopRequest | None = None) -> TrainResult:
    """Run a whole training (or this rank's part of a DDP run) with a checked config.

    The run stops early, with ``latest.pth`` written at the iteration it stopped after, when
    ``stop`` asks (its time limit; None: none) or on a signal of ``stopping.STOP_SIGNALS`` (in the
    main thread); ``TrainResult.stopped`` then says why.

    The checks between config keys (``Task.check_config`` and the trainer's), of what the run
    continues from (``state.resume_path``) and the reading of ``init_weights`` come first, then the
    process group (``ddp_timeout_s``) and the run folder (``_run_folder``: one run per folder), so
    that a bad input leaves no file behind; a folder this run created is deleted again when the
    set-up fails later (a damaged checkpoint, unreadable training images), unless it holds a run
    file. With ``fresh`` the earlier run's files are deleted once the folder is held (``clear_run``).
    Raises ``UserError`` subclasses for bad input; the folder lock, the process group, log handlers
    and the determinism flag are released on every exit path.
    """
    stop = stop if stop is not None else StopRequest()
    task = task_cls(cfg)
    task.check_config()
    resume_path(cfg)
    model = initial_model(task)
    env = setup_distributed(device, cfg.ddp_timeout_s, always=cfg.ddp == "always")
    wanted = cfg.precision if cfg.precision is not None else "bf16" if cfg.bf16 is True else "fp32"
    if env.device.type == "mps" and wanted in ("bf16", "fp16"):
        fix = "precision=fp32" if cfg.precision is not None else "bf16=false"
        raise TrainingError(f"{wanted} autocast is not offered on Apple MPS (training runs in float32 there); "
                            f"use --opt {fix}")
    save_dir = Path(cfg.save_dir)
    path = save_dir.absolute()
    created = next((p for p in reversed((path, *path.parents)) if not p.exists()), None)  # the top new folder
    trainer = None
    try:
        log_file = save_dir / "train.log" if env.is_main else None
        with _run_folder(env, save_dir) as removed, logging_to(log_file), _deterministic(cfg.deterministic):
            if removed:
                LOGGER.info("removed %d temporary file(s) of interrupted writes: %s", len(removed),
                            ", ".join(str(path) for path in removed))
            cleared = clear_run(save_dir) if cfg.fresh and env.is_main else []
            if cleared:
                LOGGER.info("--fresh: deleted %d file(s) of the earlier run: %s", len(cleared),
                            ", ".join(str(path) for path in cleared))
            if env.device.type == "cuda":
                torch.backends.cudnn.benchmark = not cfg.deterministic
                set_tf32(cfg.tf32)
                if env.is_main:
                    LOGGER.info("%s", CUDA_DETERMINISM[cfg.deterministic])
            with stop.catching():
                trainer = Trainer(task, env, model, stop)
                return trainer.fit()
    except BaseException:
        if trainer is None and created is not None and env.is_main:
            remove_unused_folder(save_dir, created)
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
