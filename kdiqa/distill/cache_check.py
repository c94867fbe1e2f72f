"""One check, for every stage that reads a cache, that the cache still belongs to the recipe.

``kdiqa cache`` refuses to extend or reuse a cache whose fingerprints differ from the recipe's; a
stage that only *reads* the cache (distill, and through it ``kdiqa bench --distill`` and
``benchmarks/kd_gain.py``) must refuse it too, or it trains on another teacher's targets, or on views
of another size, without a word. Both compute the recipe's fingerprints from the same
:class:`~kdiqa.cache.CacheSpec` (:func:`cache_spec`), with the same functions, and compare them with the same
:func:`kdiqa.cache.fingerprint.check_fingerprints`: teacher (config + weights), dataset (files,
labels, unlabelled pool), views (sampler, views per image, first view) and targets (features,
pooling, storage dtype of the maps, precision the teacher ran in).

One difference is deliberate: a reader accepts the cache's own view seed. Which crops were cached is
a property of the cache; a student trained with another ``seed`` (``kd_gain.py`` runs several) replays
the same cached views, and its targets are still the right ones.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kdiqa.cache.fingerprint import saved_teacher_fingerprint
from kdiqa.cache.spec import CacheSpec
from kdiqa.config import Recipe
from kdiqa.data.datamodule import make_sampler
from kdiqa.errors import CheckpointError
from kdiqa.io import read_json
from kdiqa.modeling import CONFIG_NAME, WEIGHTS_NAME

_TEACHER_PRINTS: dict[tuple[Any, ...], str] = {}


def cache_spec(recipe: Recipe) -> CacheSpec:
    """The recipe's cache as :func:`kdiqa.cache.build_cache` writes it and every reader checks it."""
    c = recipe.cache
    return CacheSpec(make_sampler(recipe.views, train=c.views_per_image > 1 or not c.first_view_eval),
                     views_per_image=c.views_per_image, first_view_eval=c.first_view_eval, seed=recipe.seed,
                     features=c.features, pool=c.pool, dtype=c.dtype, compression=c.compression, precision=c.precision,
                     batch_size=c.batch_size)


def teacher_print(folder: Path) -> str | None:
    """The teacher fingerprint of a saved teacher folder (read from its files), or None when there is
    no teacher there; kept per process for unchanged files (``kd_gain.py`` and ``kdiqa bench`` distil
    several students in one process, and hashing a large teacher takes seconds)."""
    files = [folder / CONFIG_NAME, folder / WEIGHTS_NAME]
    if not all(f.is_file() for f in files):
        return None
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _TEACHER_PRINTS:
        config = read_json(files[0])
        if not isinstance(config, dict) or "teacher" not in config:
            raise CheckpointError(f"{files[0]}: not a kdiqa teacher config (needs 'teacher' and 'config')")
        try:
            _TEACHER_PRINTS[key] = saved_teacher_fingerprint(config, files[1])
        except (OSError, ValueError, KeyError, EOFError) as exc:
            raise CheckpointError(f"{files[1]}: cannot read the teacher's weights ({type(exc).__name__}: {exc})") from None
    return _TEACHER_PRINTS[key]


def recipe_fingerprints(recipe: Recipe, teacher_folder: Path, meta: Mapping[str, Any]) -> dict[str, str]:
    """The teacher, views and targets fingerprints a cache read for ``recipe`` must carry.

    ``meta``: the cache's stored meta (for its view seed). The dataset fingerprint is the reader's own
    check (:class:`kdiqa.cache.CachedViews`). Without a saved teacher at ``teacher_folder`` the
    teacher cannot be checked: said in a warning, the other three still are.
    """
    spec = cache_spec(recipe)
    prints = {"views": spec.views_fingerprint(int(meta.get("seed", spec.seed))), "targets": spec.targets_fingerprint()}
    teacher = teacher_print(teacher_folder)
    if teacher is None:
        warnings.warn(f"{teacher_folder}: no saved teacher here, so the cache's teacher fingerprint cannot be checked "
                      "(its dataset, views and targets are)", stacklevel=3)
    else:
        prints = {"teacher": teacher, **prints}
    return prints
