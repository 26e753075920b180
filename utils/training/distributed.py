"""Processes and devices of a training run: the process group of a DDP run (from the variables
that ``torchrun`` sets, or that ``launch`` derives from other launchers), collectives that are
no-ops in a single process, and a shuffling sampler that can resume mid-epoch."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from utils.devices import choose_device


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


def setup_distributed(device_name: str | None) -> DistEnv:
    """Read the ``torchrun`` environment (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR and MASTER_PORT
    for the rendezvous), choose this process's device (``utils.devices.choose_device``) and start
    the process group when there are several processes (NCCL on CUDA, gloo otherwise). A plain
    ``python`` run is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name, local_rank, world)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return DistEnv(rank, world, local_rank, device)


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
