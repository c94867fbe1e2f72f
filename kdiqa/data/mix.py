"""Batches with a fixed share of unlabelled items: ``distill.unlabelled_fraction``.

Why: with a pool many times the labelled set, natural proportions leave few labelled rows per batch
(and many batches with none); with a small pool, they leave little teacher-only signal. A fixed share
per batch decouples the two: every batch of ``B`` holds ``q = round(fraction · B)`` pool items and
``B − q`` labelled ones (at least one of each when 0 < fraction < 1).

An epoch is as many batches as the labelled set and the pool fill together (``(n_labelled + n_pool)
// B`` over all processes), so ``max_epochs`` keeps its meaning and its cost; each of the two streams
is drawn without replacement and reshuffled each time it runs out, so both are covered evenly across
epochs whichever is the larger. Everything is a function of (seed, epoch), hence repeatable.

Why a :class:`DistributedSampler` subclass: under DDP Lightning replaces any other training sampler
with a shuffling DistributedSampler; it keeps one that already is. Each process takes every
``num_replicas``-th batch, so the processes together see what one process would.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import DistributedSampler

from kdiqa.errors import ConfigError


def pool_share(batch_size: int, fraction: float) -> int:
    """Pool items per batch of ``batch_size``: ``round(fraction · B)``, keeping both kinds when 0 < f < 1."""
    q = int(round(fraction * batch_size))
    if 0 < fraction < 1 and batch_size >= 2:
        q = min(max(q, 1), batch_size - 1)
    return q


class MixedSampler(DistributedSampler):
    """Dataset indices whose every run of ``batch_size`` is one batch with a fixed pool share.

    ``labelled``: per dataset item, whether it has a label; ``fraction``: the share of pool items.
    Use with ``DataLoader(batch_size=batch_size, sampler=..., shuffle=False)``.
    """

    def __init__(self, labelled: np.ndarray, batch_size: int, fraction: float, *, seed: int = 0,
                 shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        labelled = np.asarray(labelled, dtype=bool)
        super().__init__(range(len(labelled)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = int(batch_size)
        self.streams = (np.nonzero(labelled)[0], np.nonzero(~labelled)[0])  # (labelled, pool) item indices
        self.per_batch = (self.batch_size - pool_share(self.batch_size, fraction), pool_share(self.batch_size, fraction))
        for items, take, what in zip(self.streams, self.per_batch, ("labelled", "unlabelled"), strict=True):
            if take and not len(items):
                raise ConfigError(f"distill.unlabelled_fraction: {fraction:g} asks for {what} items in every batch, "
                                  f"and the training set holds none")
        self.batches = max(1, len(labelled) // (self.batch_size * self.num_replicas))  # per process and epoch

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        total = self.batches * self.num_replicas  # batches of all processes this epoch
        drawn = [self._draw(k, total * take) for k, take in enumerate(self.per_batch)]
        for b in range(self.rank, total, self.num_replicas):
            for k, take in enumerate(self.per_batch):
                yield from (int(i) for i in drawn[k][b * take : (b + 1) * take])

    def _draw(self, stream: int, count: int) -> np.ndarray:
        """This epoch's ``count`` items of a stream: the next positions of its endless run of permutations."""
        items = self.streams[stream]
        if not count:
            return items[:0]
        start = self.epoch * count
        cycles = range(start // len(items), (start + count - 1) // len(items) + 1)
        order = np.concatenate([items[self._permutation(stream, c, len(items))] for c in cycles])
        offset = start - cycles[0] * len(items)
        return order[offset : offset + count]

    def _permutation(self, stream: int, cycle: int, n: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, stream, cycle]).permutation(n)
