"""The cache stage: the trained teacher's targets per (training image, view), stored once in HDF5."""
from __future__ import annotations

from typing import Any

from kdiqa.cache import build_cache
from kdiqa.config import Recipe
from kdiqa.distill.cache_check import cache_spec
from kdiqa.measure import default_device
from kdiqa.models import require_model
from kdiqa.run import RunDir
from kdiqa.stages.data import data_module
from kdiqa.teachers.base import Teacher


def stage_cache(recipe: Recipe, run: RunDir, shard: tuple[int, int] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the trained teacher once per (training image, view) and store its targets in HDF5.

    The training images are the labelled training split, then the unlabelled pool if the recipe has one.
    """
    dm = data_module(recipe)
    dm.setup()
    teacher = Teacher.from_pretrained(require_model(run.teacher, "kdiqa fit-teacher"))
    spec = cache_spec(recipe)  # the same spec every reader checks the cache against
    return build_cache(spec, teacher, dm.distill_samples(), run.cache, shard=shard, device=default_device(),
                       num_workers=recipe.data.num_workers, force=force)
