"""Deterministic batch order for resumable training.

The sample at global position p = iteration·B + j is `perm_e[p mod N]`, where `perm_e` is a
permutation seeded by (seed, epoch e = p div N). Each sample also carries an augmentation seed
derived from (seed, p). The order is therefore a pure function of (seed, iteration): a run
resumed at iteration k sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class IterationBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields `[(index, aug_seed), ...]` for iterations `start .. iterations-1`."""

    def __init__(self, n: int, batch_size: int, iterations: int, seed: int, start: int = 0) -> None:
        if n <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        self.n, self.batch_size, self.iterations = n, batch_size, iterations
        self.seed, self.start = seed, start
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0x5A]))
            self._perms = {epoch: rng.permutation(self.n)}
        return self._perms[epoch]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        out = []
        for j in range(self.batch_size):
            p = iteration * self.batch_size + j
            idx = int(self._perm(p // self.n)[p % self.n])
            aug = int(np.random.Generator(np.random.PCG64([self.seed, p, 0xA6])).integers(2**62))
            out.append((idx, aug))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.iterations):
            yield self.batch(it)

    def __len__(self) -> int:
        return max(0, self.iterations - self.start)


class SeededAugment(Dataset):
    """Wraps a dataset: item `(index, aug_seed)` -> `augment(ds[index], generator)`."""

    def __init__(self, ds: Any, augment: Callable[[dict, torch.Generator], dict] | None) -> None:
        self.ds, self.augment = ds, augment

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, aug_seed = key
        item = self.ds[index]
        if self.augment is None:
            return item
        g = torch.Generator().manual_seed(aug_seed)
        return self.augment(item, g)
