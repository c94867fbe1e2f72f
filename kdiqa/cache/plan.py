"""Which rows a cache run writes, in which batches, and which view each row is.

Everything here is a pure function of (number of images, views per image, batch size, shard, seed),
never of what happened before: a resumed run, a sharded run and an uninterrupted run therefore draw
the same views and run the teacher on the same batches, which is what makes their files identical.

Row ``r`` is view ``r % K`` of image ``r // K``. Batches are fixed blocks of ``batch_size`` rows
counted from row 0 of the whole cache; a shard takes a contiguous run of whole blocks, so every batch
a shard computes is a batch the single-process run computes too (same inputs, same batch size, hence
the same floating-point results on any backend).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdiqa.data.views import ViewParams, ViewSampler
from kdiqa.errors import ConfigError


@dataclass(frozen=True)
class CachePlan:
    num_images: int
    views_per_image: int
    batch_size: int
    shard_index: int = 0
    shard_count: int = 1

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ConfigError("cache: no images to cache (the sample list is empty)")
        if not (self.shard_count >= 1 and 0 <= self.shard_index < self.shard_count):
            raise ConfigError(f"cache shard: need 0 <= i < n, got {self.shard_index}/{self.shard_count}")
        if self.shard_count > self.num_blocks:
            raise ConfigError(
                f"cache shard {self.shard_index}/{self.shard_count}: only {self.num_blocks} batches of "
                f"{self.batch_size} views to share; use at most {self.num_blocks} shards or a smaller batch size"
            )

    @property
    def total_rows(self) -> int:
        return self.num_images * self.views_per_image

    @property
    def num_blocks(self) -> int:
        return -(-self.total_rows // self.batch_size)

    @property
    def sharded(self) -> bool:
        return self.shard_count > 1

    @property
    def rows(self) -> tuple[int, int]:
        """``[start, stop)`` of the rows this shard owns, in whole blocks."""
        first = self.shard_index * self.num_blocks // self.shard_count
        last = (self.shard_index + 1) * self.num_blocks // self.shard_count
        return first * self.batch_size, min(last * self.batch_size, self.total_rows)

    def blocks(self) -> list[tuple[int, int]]:
        """The ``[start, stop)`` row ranges of this shard's batches."""
        start, stop = self.rows
        return [(r, min(r + self.batch_size, stop)) for r in range(start, stop, self.batch_size)]

    def image_of(self, row: int) -> int:
        return row // self.views_per_image

    def view_of(self, row: int) -> int:
        return row % self.views_per_image


def draw_view(
    sampler: ViewSampler, image_size: tuple[int, int], seed: int, image_index: int, view_id: int, first_view_eval: bool
) -> ViewParams:
    """The view ``view_id`` of image ``image_index``: drawn from its own generator, seeded by
    ``(seed, image_index, view_id)``, so no view depends on which other views were drawn before it."""
    if first_view_eval and view_id == 0:
        return sampler.eval_params()
    rng = np.random.default_rng([int(seed), int(image_index), int(view_id)])
    return sampler.sample(image_size, rng)
