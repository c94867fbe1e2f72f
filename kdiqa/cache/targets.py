"""Teacher targets: what a student is distilled towards, taken from one teacher forward pass.

One function serves both sources of targets: the cache writer, which stores them, and online
distillation (:mod:`kdiqa.distill.module`), which uses them at once. So a cached target and an online
one are the same numbers until the cache's storage dtype rounds the feature maps.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kdiqa.cache.layout import RESERVED_FEATURE_NAMES
from kdiqa.cache.spec import pool_size
from kdiqa.errors import ConfigError
from kdiqa.teachers.base import TeacherOutput


def teacher_targets(
    out: TeacherOutput, features: Sequence[str] | None, pool: Mapping[str, Any], at: str
) -> dict[str, torch.Tensor]:
    """``score``, ``dist`` (when the teacher has one) and each named feature map (every one when
    ``features`` is None), the maps in ``pool`` adaptive-average pooled to its size; float32, detached.

    ``at``: the recipe key the feature names come from (``cache.features``, ``distill.features``), for errors.
    """
    targets: dict[str, torch.Tensor] = {"score": out.score.detach().float()}
    if out.dist is not None:
        targets["dist"] = out.dist.detach().float()
    for name in list(out.features) if features is None else features:
        if name in RESERVED_FEATURE_NAMES:
            raise ConfigError(f"{at}: a feature may not be called {name!r} (reserved for the teacher's {name})")
        if name not in out.features:
            raise ConfigError(f"{at}: the teacher has no feature {name!r} (it returns: {', '.join(out.features) or 'none'})")
        fmap = out.features[name].detach().float()
        if name in pool:
            if fmap.dim() != 4:
                raise ConfigError(f"cache.pool: {name!r} has shape {tuple(fmap.shape[1:])}; only (C, H, W) maps can be pooled")
            fmap = F.adaptive_avg_pool2d(fmap, pool_size(pool[name]))
        targets[name] = fmap
    return targets
