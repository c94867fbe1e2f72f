"""What a cache holds and how it is written, as one value: the writer takes it, every reader rebuilds it.

Its sampler, views per image, first view, seed, features, pooling, dtype and teacher precision decide
the cache's contents and are what its views and targets fingerprints cover; compression, batch size and
the feature size limit decide only how it is written. A recipe's spec is made in one place
(:func:`kdiqa.distill.cache_check.cache_spec`), so the stage that writes a cache and the stages that
read it agree on it. Its values are trusted: a recipe's were checked when it was loaded
(:mod:`kdiqa.config.schema`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from kdiqa.cache.fingerprint import dataset_fingerprint, targets_fingerprint, teacher_fingerprint, view_fingerprint
from kdiqa.data.sample import IQASample
from kdiqa.data.views import ViewSampler
from kdiqa.errors import ConfigError


def pool_size(value: int | Sequence[int]) -> tuple[int, int]:
    """A ``cache.pool`` size as (height, width): an int is a square."""
    size = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    return int(size[0]), int(size[1])


@dataclass(frozen=True)
class CacheSpec:
    """``features=None`` stores every feature the teacher returns; ``pool`` maps a feature to the size it
    is adaptive-average pooled to (an int or (height, width)) for maps too large to keep whole (a feature
    above ``max_feature_bytes`` per view is refused unpooled)."""

    sampler: ViewSampler
    views_per_image: int = 1
    first_view_eval: bool = True  # view 0 is the plain evaluation view
    seed: int = 0
    features: Sequence[str] | None = None
    pool: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float16"  # of the stored feature maps: float16, float32, int8 (scores and distributions stay float32)
    compression: str = "none"
    precision: str = "fp32"  # the teacher's forward: fp32, or bf16/fp16 autocast (kdiqa.cache.precision)
    batch_size: int = 32
    max_feature_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", None if self.features is None else tuple(self.features))
        object.__setattr__(self, "pool", {str(k): pool_size(v) for k, v in self.pool.items()})
        stray = [k for k in self.pool if self.features is not None and k not in self.features]
        if stray:  # checked here, not in the recipe: online distillation pools distill.features by cache.pool
            raise ConfigError(f"cache.pool: {stray[0]!r} is not in cache.features ({', '.join(self.features or ()) or 'none'})")
        if self.views_per_image > 1 and not self.sampler.train:  # a caller's sampler, not a recipe's
            raise ConfigError(
                f"cache.views_per_image: {self.views_per_image} views need a training view sampler "
                "(random crops/flips); with an evaluation sampler every view is the same whole image"
            )

    def views_fingerprint(self, seed: int | None = None) -> str:
        """``seed``: the view seed the cache was written with, if not this spec's (a reader's check)."""
        return view_fingerprint(self.sampler, self.views_per_image, self.first_view_eval, self.seed if seed is None else seed)

    def targets_fingerprint(self) -> str:
        return targets_fingerprint(["*"] if self.features is None else self.features, self.pool, self.dtype, self.precision)

    def fingerprints(self, teacher: nn.Module, samples: Sequence[IQASample]) -> dict[str, str]:
        """The four digests a cache written with this spec, ``teacher`` and ``samples`` records."""
        return {
            "teacher": teacher_fingerprint(teacher),
            "dataset": dataset_fingerprint(samples),
            "views": self.views_fingerprint(),
            "targets": self.targets_fingerprint(),
        }
