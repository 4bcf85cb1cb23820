"""Deterministic sampling: every image's augmentation and order seeded by (seed, epoch, index), so the
number of DataLoader workers (or processes) never changes a result."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def item_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


class EpochSeededSampler(Sampler):
    """Yields (index, seed) pairs: the seed of an item's augmentation depends on (run seed, epoch,
    index) only, so persistent workers, any worker count and ``--resume`` all give the same images."""

    def __init__(self, sampler: DistributedSampler, seed: int):
        self.sampler, self.seed, self.epoch = sampler, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((i, item_seed(self.seed, self.epoch, i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededItems(Dataset):
    """Dataset wrapper for ``EpochSeededSampler``: seeds torch's RNG per item before transforming."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        return self.dataset[index]
