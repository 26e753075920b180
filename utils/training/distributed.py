"""Processes and devices of a training run: the launch variables, checked where they are read
(``launch_variables``), the process group of a DDP run (from the variables that ``torchrun`` sets,
or that ``launch`` derives from other launchers) with a timeout on every collective, collectives
that are no-ops in a single process without a group, the DataLoader workers of each process, and a
shuffling sampler that can resume mid-epoch."""
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

from utils.config import ConfigError
from utils.devices import choose_device
from utils.errors import UserError

_LOST_PEER = re.compile(r"timed? ?out|timeout|connection (?:closed|reset)|pair closure|broken pipe", re.IGNORECASE)


class DistributedError(UserError, RuntimeError):
    """The processes of a DDP run lost each other (one stalled or died); the message is one line."""


class LaunchError(UserError, ValueError):
    """A launch variable (RANK, WORLD_SIZE, SLURM_PROCID, ...) holds a value the run cannot use; the
    message is one line naming the variable and what is allowed."""


def env_int(environ, name: str, default: int | None, minimum: int = 0, maximum: int | None = None,
            why: str = "") -> int | None:
    """The integer of environment variable ``name`` in ``environ`` (``default`` when it is unset),
    checked to lie in [``minimum``, ``maximum``] (``why``: what sets the maximum, for the message).
    Raises LaunchError, one line naming the variable and the allowed values, for anything else."""
    text = environ.get(name)
    if text is None:
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        allowed = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
        shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
        raise LaunchError(f"environment variable {name}={shown}: must be {allowed}{why} (it is set by the "
                          f"launcher: torchrun, srun; unset it for a single process)")
    return value


@dataclass(frozen=True)
class Launch:
    """What the launcher says about this process: its ``rank`` of ``world_size`` processes, its
    ``local_rank`` on this node, and ``local_world_size``, the processes on this node that share its
    GPUs (torchrun's LOCAL_WORLD_SIZE; None when the launcher does not say)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None


def launch_variables(environ) -> Launch:
    """Read and check RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and MASTER_PORT in ``environ``
    (a plain process: rank 0 of 1). Raises LaunchError (one line) for a value that is not an
    integer, out of range (RANK >= WORLD_SIZE, WORLD_SIZE 0, a port outside 1-65535) or
    inconsistent."""
    world = env_int(environ, "WORLD_SIZE", 1, minimum=1)
    rank = env_int(environ, "RANK", 0, maximum=world - 1, why=f" (WORLD_SIZE is {world})")
    local_world = env_int(environ, "LOCAL_WORLD_SIZE", None, minimum=1, maximum=world,
                          why=f" (WORLD_SIZE is {world})")
    top, by = (local_world, "LOCAL_WORLD_SIZE") if local_world is not None else (world, "WORLD_SIZE")
    local_rank = env_int(environ, "LOCAL_RANK", 0, maximum=top - 1, why=f" ({by} is {top})")
    env_int(environ, "MASTER_PORT", None, minimum=1, maximum=65535, why=" (a TCP port)")
    return Launch(rank, world, local_rank, local_world)


def slurm_tasks_on_node(environ) -> int | None:
    """The tasks SLURM runs on this node (SLURM_NTASKS_PER_NODE, else this node's entry, by
    SLURM_NODEID, of SLURM_TASKS_PER_NODE such as '2(x3),1'); None outside SLURM. Raises
    LaunchError for a malformed value."""
    per_node = env_int(environ, "SLURM_NTASKS_PER_NODE", None, minimum=1)
    if per_node is not None or "SLURM_TASKS_PER_NODE" not in environ:
        return per_node
    text = environ["SLURM_TASKS_PER_NODE"]
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match or int(match[1]) < 1:
            raise LaunchError(f"environment variable SLURM_TASKS_PER_NODE={text!r}: must be task counts such as "
                              f"4 or 2(x3),1 (it is set by srun)")
        counts += [int(match[1])] * int(match[2] or 1)
    node = env_int(environ, "SLURM_NODEID", 0, maximum=len(counts) - 1,
                   why=f" (SLURM_TASKS_PER_NODE lists {len(counts)} node(s))")
    return counts[node]


def workers_per_process(num_workers: int, local_world_size: int) -> int:
    """DataLoader workers of one process: config key ``num_workers`` (the node's total) divided
    among the ``local_world_size`` processes on this node, at least 1 when ``num_workers`` > 0
    (0: each process loads its own batches)."""
    return max(num_workers // local_world_size, 1) if num_workers else 0


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
    """This process in the run: rank, number of processes, local rank, device, the processes on
    this node (``local_world_size``) and whether a process group runs (``group``: several
    processes, or one with config key ``ddp: always``)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    local_world_size: int = 1
    group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group runs (DDP): several processes, or one with ``ddp: always``."""
        return self.group

    def all_reduce(self, values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Reduce a tensor over the processes (via this process's device); returns it on its
        original device. A single process gets the tensor back unchanged."""
        if not self.distributed:
            return values
        moved = values.to(self.device)
        dist.all_reduce(moved, op=op)
        return moved.to(values.device)


def setup_distributed(device_name: str | None, timeout_s: float = 1800, always: bool = False) -> DistEnv:
    """Read the ``torchrun`` environment (``launch_variables``: RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE; MASTER_ADDR and MASTER_PORT for the rendezvous), choose this process's device
    (``utils.devices.choose_device``, which refuses more processes on a node than its GPUs) and
    start the process group when there are several processes, or with ``always`` (config key
    ``ddp: always``) also for one: NCCL on CUDA, gloo otherwise. A plain ``python`` run is a single
    process without a group.

    ``timeout_s`` bounds the rendezvous and every collective: on the CPU (gloo) a collective that
    waits longer raises a RuntimeError (``lost_peer``); on GPUs NCCL's watchdog ends the process.
    Raises LaunchError for bad launch variables, ConfigError for ``always`` without a launcher's
    rendezvous, DistributedError when the processes do not all arrive within the timeout.
    """
    launch = launch_variables(os.environ)
    rank, world = launch.rank, launch.world_size
    group = world > 1 or always
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if group and missing and world > 1:
        raise LaunchError(f"WORLD_SIZE is {world} but {' and '.join(missing)} unset: start the processes with "
                          f"torchrun or srun, which set the rendezvous")
    if group and missing:
        raise ConfigError("config key 'ddp': always starts a process group, which needs a launcher's rendezvous "
                          "(MASTER_ADDR, MASTER_PORT): run under torchrun --nproc_per_node=1")
    device = choose_device(device_name, launch.local_rank, world, launch.local_world_size)
    local_world = launch.local_world_size or slurm_tasks_on_node(os.environ) or world
    if group and not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            if device.type == "cuda":
                dist.init_process_group("nccl", device_id=device, timeout=timeout, rank=rank, world_size=world)
            else:
                dist.init_process_group("gloo", timeout=timeout, rank=rank, world_size=world)
        except RuntimeError as err:
            if not lost_peer(err):
                raise
            raise DistributedError(f"rank {rank}: the {world} processes did not all start within ddp_timeout_s="
                                   f"{timeout_s:g} s; check that every process was launched and can reach "
                                   f"MASTER_ADDR") from None
    return DistEnv(rank, world, launch.local_rank, device, local_world, group)


def leave_if_peer(status: int, environ=os.environ) -> None:
    """End this process at once with ``status`` when it is a rank other than 0 of a run of several
    processes (RANK and WORLD_SIZE in ``environ``); return otherwise.

    A DDP model keeps its gloo process group alive until the interpreter shuts down, and that
    shutdown can abort ("terminate called without an active exception") when rank 0, which hosts
    the rendezvous store under srun, exits at the same moment. Ranks other than 0 write no files,
    so after flushing their output they skip the interpreter's shutdown (``os._exit``).
    """
    try:
        launch = launch_variables(environ)
    except LaunchError:  # already reported as the run's error
        return
    if launch.world_size > 1 and launch.rank != 0:
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
