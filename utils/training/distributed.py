"""Processes and devices of a training run: the process group of a DDP run (from the variables
that ``torchrun`` sets, or that ``launch`` derives from other launchers) with a timeout on every
collective, collectives that are no-ops in a single process, and a shuffling sampler that can
resume mid-epoch."""
from __future__ import annotations

import datetime
import itertools
import os
import re
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from utils.devices import choose_device
from utils.errors import UserError

_LOST_PEER = re.compile(r"timed? ?out|timeout|connection (?:closed|reset)|pair closure|broken pipe", re.IGNORECASE)


class DistributedError(UserError, RuntimeError):
    """The processes of a DDP run lost each other (one stalled or died); the message is one line."""


def lost_peer(err: BaseException) -> bool:
    """Whether ``err``, raised by a collective or the rendezvous, says that another process did not
    answer within the timeout or went away (gloo and the c10d store raise RuntimeErrors saying so)."""
    return isinstance(err, RuntimeError) and bool(_LOST_PEER.search(str(err)))


def others(rank: int, world_size: int) -> str:
    """How this process names the others: 'rank 1' (or 'rank 0') in a two-process run, else 'another of
    the N processes'."""
    return f"rank {1 - rank}" if world_size == 2 else f"another of the {world_size} processes"


@dataclass(frozen=True)
class DistEnv:
    """This process in the run: rank, number of processes, local rank and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when several processes train together (a process group is running)."""
        return self.world_size > 1

    def all_reduce(self, values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Reduce a tensor over the processes (via this process's device); returns it on its
        original device. A single process gets the tensor back unchanged."""
        if not self.distributed:
            return values
        moved = values.to(self.device)
        dist.all_reduce(moved, op=op)
        return moved.to(values.device)


def launched_rank(environ) -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as the launcher set them in ``environ``; (0, 1) for a plain process."""
    return int(environ.get("RANK", "0")), int(environ.get("WORLD_SIZE", "1"))


def setup_distributed(device_name: str | None, timeout_s: float = 1800) -> DistEnv:
    """Read the ``torchrun`` environment (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR and MASTER_PORT
    for the rendezvous), choose this process's device (``utils.devices.choose_device``) and start
    the process group when there are several processes (NCCL on CUDA, gloo otherwise). A plain
    ``python`` run is a single process.

    ``timeout_s`` bounds the rendezvous and every collective: on the CPU (gloo) a collective that
    waits longer raises a RuntimeError (``lost_peer``); on GPUs NCCL's watchdog ends the process.
    Raises DistributedError when the processes do not all arrive within it.
    """
    rank, world = launched_rank(os.environ)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name, local_rank, world)
    if world > 1 and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)
                dist.init_process_group("nccl", device_id=device, timeout=timeout)
            else:
                dist.init_process_group("gloo", timeout=timeout)
        except RuntimeError as err:
            if not lost_peer(err):
                raise
            raise DistributedError(f"rank {rank}: the {world} processes did not all start within ddp_timeout_s="
                                   f"{timeout_s:g} s; check that every process was launched and can reach "
                                   f"MASTER_ADDR") from None
    return DistEnv(rank, world, local_rank, device)


def leave_if_peer(status: int, environ=os.environ) -> None:
    """End this process at once with ``status`` when it is a rank other than 0 of a run of several
    processes (RANK and WORLD_SIZE in ``environ``); return otherwise.

    A DDP model keeps its gloo process group alive until the interpreter shuts down, and that
    shutdown can abort ("terminate called without an active exception") when rank 0, which hosts
    the rendezvous store under srun, exits at the same moment. Ranks other than 0 write no files,
    so after flushing their output they skip the interpreter's shutdown (``os._exit``).
    """
    rank, world = launched_rank(environ)
    if world > 1 and rank != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def all_gather_objects(env: DistEnv, obj: object) -> list:
    """Every process's ``obj``, in rank order (collective); ``[obj]`` in a single process."""
    if not env.distributed:
        return [obj]
    gathered: list = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by seed + epoch) that can start part-way into an epoch.

    With one process it is a plain seeded shuffle; with N processes, process r takes every
    N-th index of the same permutation from r on, so that the N shares of each step together
    are the global batch of a single process. ``set_start(n)`` skips the first n indices of this
    process's share of the current epoch (set it back to 0 for the next epoch).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this process's share from now on."""
        self.start = start

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)
