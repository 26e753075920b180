"""The base of the training sets: sample ``index`` of an epoch draws only from its own generator."""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from utils.seeding import sample_rng


class EpochSampled(Dataset):
    """A training set of ``length`` samples per epoch whose sample ``index`` takes every random
    number from ``utils.seeding.sample_rng(seed, epoch, index)``, so a sample is the same whichever
    process, DataLoader worker or resumed run builds it.

    Subclasses call ``super().__init__(length, seed)`` and draw from ``self.rng_for(index)``. Call
    ``set_epoch`` before each epoch; DataLoader workers that persist across epochs keep their own
    copy, so create the loader per epoch or use ``persistent_workers=False``.
    """

    def __init__(self, length: int, seed: int):
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        self.length, self.seed, self.epoch = int(length), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (a non-negative integer)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch; IndexError outside 0..length-1."""
        if not 0 <= index < self.length:
            raise IndexError(f"sample index {index} out of range 0..{self.length - 1}")
        return sample_rng(self.seed, self.epoch, index)
