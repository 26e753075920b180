"""Optimisers and learning-rate schedules by name: config keys ``optimizer`` and ``scheduler``.

Each entry of ``OPTIMIZERS`` / ``SCHEDULES`` names a builder and declares the config keys it reads
(``utils.config.Key``); the engine adds every declared key to its own (``task.ENGINE_KEYS``), so a
new optimiser or schedule is one entry here, and a trainer chooses another one by overriding
``Task.build_optimizer`` / ``Task.build_scheduler``. The defaults, Adam and warm-up + cosine per
epoch, are the reference's. See docs/extending.md.

A schedule is a ``LambdaLR`` stepped once per epoch: its factor depends only on the config and
the epoch, so a checkpoint's scheduler state (``last_epoch``, base rates) resumes it exactly, and
a resumed run whose schedule keys changed continues on the new schedule (``state.apply_schedule``).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from utils.config import Config, Key


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimiser: ``make(parameters, lr=..., **options(cfg))`` builds it; ``keys`` are the config
    keys ``options`` reads (hyper-parameters besides ``lr``, re-applied on resume)."""

    make: Callable[..., torch.optim.Optimizer]
    options: Callable[[Config], dict[str, Any]]
    keys: Mapping[str, Key]


@dataclass(frozen=True)
class ScheduleEntry:
    """One learning-rate schedule: ``factor(cfg, epoch)`` is the multiple of ``lr`` used during the
    0-based ``epoch``; ``keys`` are the config keys it reads besides the common ``SCHEDULE_BASE_KEYS``."""

    factor: Callable[[Config, int], float]
    keys: Mapping[str, Key]


def _adam_options(cfg: Config) -> dict[str, Any]:
    return {"weight_decay": cfg.weight_decay}


_ADAM_KEYS = {
    "weight_decay": Key("float", 0.0, "weight decay: added to the gradient with adam, decoupled with adamw "
                        "(e.g. 0.01)", minimum=0),
}

OPTIMIZERS: dict[str, OptimizerEntry] = {
    "adam": OptimizerEntry(torch.optim.Adam, _adam_options, _ADAM_KEYS),
    "adamw": OptimizerEntry(torch.optim.AdamW, _adam_options, _ADAM_KEYS),
}
"""Config value of ``optimizer`` -> its entry."""


def warmup_factor(cfg: Config, epoch: int) -> float | None:
    """The linear warm-up's factor (epoch + 1) / warmup_epochs during the first ``warmup_epochs``
    epochs, None after them."""
    return (epoch + 1) / cfg.warmup_epochs if epoch < cfg.warmup_epochs else None


def lr_at_epoch(epoch: int, base: float, lr_min: float, warmup: int, epochs: int) -> float:
    """Learning rate of the reference's schedule during 0-based ``epoch``.

    Warm-up: base * (epoch + 1) / warmup for epoch < warmup. Then cosine from base down to
    lr_min over the remaining epochs: lr_min + (base - lr_min) * (1 + cos(pi k / T)) / 2 with
    k = epoch - warmup, T = epochs - warmup.
    """
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    span = max(epochs - warmup, 1)
    return lr_min + (base - lr_min) * (1 + math.cos(math.pi * (epoch - warmup) / span)) / 2


def _cosine(cfg: Config, epoch: int) -> float:
    return lr_at_epoch(epoch, cfg.lr, cfg.lr_min, cfg.warmup_epochs, cfg.epochs) / cfg.lr


def _multistep(cfg: Config, epoch: int) -> float:
    warm = warmup_factor(cfg, epoch)
    return warm if warm is not None else cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), epoch)


SCHEDULES: dict[str, ScheduleEntry] = {
    "cosine": ScheduleEntry(_cosine, {}),
    "multistep": ScheduleEntry(_multistep, {
        "milestones": Key("ints", [], "multistep: 0-based epochs from which the learning rate is multiplied by "
                          "gamma once more", minimum=0),
        "gamma": Key("float", 0.5, "multistep: the factor applied at each milestone", minimum=0, maximum=1),
    }),
}
"""Config value of ``scheduler`` -> its entry. Every schedule warms up over ``warmup_epochs`` first."""

SCHEDULE_BASE_KEYS = ("lr", "lr_min", "warmup_epochs", "epochs")
"""The engine's schedule keys, read by every schedule."""

OPTIM_KEYS: dict[str, Key] = {
    "optimizer": Key("str", "adam", "the optimiser (utils/training/optim.py)", choices=tuple(OPTIMIZERS)),
    **{name: key for entry in OPTIMIZERS.values() for name, key in entry.keys.items()},
    "scheduler": Key("str", "cosine", "the learning-rate schedule per epoch after the warm-up: cosine (from lr "
                     "down to lr_min at the last epoch) or multistep (lr times gamma at each milestone)",
                     choices=tuple(SCHEDULES)),
    **{name: key for entry in SCHEDULES.values() for name, key in entry.keys.items()},
}
"""The config keys of this module, added to ``task.ENGINE_KEYS``."""

SCHEDULE_KEYS = (*SCHEDULE_BASE_KEYS, "scheduler", *(name for entry in SCHEDULES.values() for name in entry.keys))
"""Every config key of the learning-rate schedules: a change on resume re-applies the schedule."""


def build_optimizer(parameters: Iterable[torch.nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    """The optimiser of config key ``optimizer`` over ``parameters``, at learning rate ``cfg.lr``."""
    entry = OPTIMIZERS[cfg.optimizer]
    return entry.make(parameters, lr=cfg.lr, **entry.options(cfg))


def apply_options(optimizer: torch.optim.Optimizer, cfg: Config) -> None:
    """Set the hyper-parameters of config key ``optimizer`` (e.g. ``weight_decay``) on every parameter
    group: a resumed run takes the current config's, not the checkpoint's."""
    options = OPTIMIZERS[cfg.optimizer].options(cfg)
    for group in optimizer.param_groups:
        group.update(options)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per epoch that follows the schedule of config key ``scheduler``."""
    factor = SCHEDULES[cfg.scheduler].factor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: factor(cfg, epoch))
