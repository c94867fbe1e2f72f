"""The cache stage: the trained teacher's targets per (training image, view), stored once in HDF5.

Started as N processes (``torchrun --nproc-per-node N kdiqa cache RECIPE``, or ``srun --ntasks N``),
each process writes shard ``RANK`` of ``WORLD_SIZE`` on device ``cuda:LOCAL_RANK`` (the CPU without
CUDA; :mod:`kdiqa.distributed`), rank 0 merges the shards once all are finished, and every process
returns after the merge, so a stage that follows in ``kdiqa run`` finds the cache whole. A shard holds
the very batches the single process computes (:mod:`kdiqa.cache.plan`), so the merged cache equals
the one-process cache; a rerun resumes each unfinished shard, as one process resumes its file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kdiqa.cache import CacheError, CacheSpec, build_cache, merge_shards, require_complete
from kdiqa.cache.progress import printer
from kdiqa.cache.shards import WAIT_SECONDS, wait_for_merged, wait_for_shards
from kdiqa.cache.status import find_shards
from kdiqa.config import Recipe
from kdiqa.data.sample import IQASample
from kdiqa.distill.cache_check import cache_spec
from kdiqa.distributed import Launch, launch_from_env
from kdiqa.errors import ConfigError
from kdiqa.measure import default_device
from kdiqa.models import require_model
from kdiqa.run import RunDir, teacher_threads
from kdiqa.stages.data import data_module
from kdiqa.teachers.base import Teacher


def stage_cache(recipe: Recipe, run: RunDir, shard: tuple[int, int] | None = None, force: bool = False,
                wait: float = WAIT_SECONDS, launch: Launch | None = None) -> dict[str, Any]:
    """Run the trained teacher once per (training image, view) and store its targets in HDF5.

    The training images are the labelled training split, then the unlabelled pool if the recipe has one.
    ``shard=(i, n)`` writes one shard by hand; under a multi-process launch (``launch``, read from the
    environment by default) the shard is the process's rank instead. ``wait``: seconds a process waits
    for a shard that shows no progress (another process failed?) before it gives up with an error.
    """
    launch = launch_from_env() if launch is None else launch
    if launch.distributed and shard is not None:
        raise ConfigError(f"--shard {shard[0]}/{shard[1]}: this process is {launch.describe()}, which already "
                          "names its shard; leave --shard out")
    dm = data_module(recipe)
    dm.setup()
    teacher = Teacher.from_pretrained(require_model(run.teacher, "kdiqa fit-teacher"))
    spec = cache_spec(recipe)  # the same spec every reader checks the cache against
    with teacher_threads(recipe):
        if launch.distributed:
            return _cache_shared(spec, teacher, dm.distill_samples(), run.cache, launch, recipe.data.num_workers, force, wait)
        return build_cache(spec, teacher, dm.distill_samples(), run.cache, shard=shard, device=default_device(),
                           num_workers=recipe.data.num_workers, force=force)


def _cache_shared(spec: CacheSpec, teacher: Teacher, samples: list[IQASample], path: Path, launch: Launch,
                  num_workers: int, force: bool, wait: float) -> dict[str, Any]:
    """One process's part of a cache written by ``launch.world_size`` processes; see the module docstring.

    Each process says which shard it writes on which device; then only rank 0 prints progress (the
    shards are the same size, so its progress is everyone's); every process reports its own errors.
    """
    lead = launch.rank == 0
    facts = {"rank": launch.rank, "world_size": launch.world_size, "launcher": launch.launcher}
    device = launch.device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # else every process also opens a context on cuda:0
    if path.exists() and not force:  # finished before (merged, or by one process): checked, as one process would
        return {**build_cache(spec, teacher, samples, path, device=device, num_workers=num_workers, progress=lead), **facts}
    stale = sorted(f for count, files in find_shards(path).items() if count != launch.world_size for f in files.values())
    if stale and not force:  # refused by every process alike, before any work (the merge would refuse it last)
        raise CacheError(f"{path}: shard files of a run with another number of processes lie beside it ({stale[0].name}); "
                         "rerun with that many processes to finish it, or pass --force to replace them")
    printer(True)(f"cache: {launch.describe()}: shard {launch.rank}/{launch.world_size} on {device}; rank 0 joins the "
                  f"{launch.world_size} shards when all are finished")
    summary = build_cache(spec, teacher, samples, path, shard=(launch.rank, launch.world_size), device=device,
                          num_workers=num_workers, force=force, progress=lead)
    fingerprints = require_complete(summary["path"])["fingerprints"]
    wait_for_shards(path, launch.world_size, fingerprints, timeout=wait, progress=lead)
    if lead:
        for file in stale:  # only with --force
            file.unlink(missing_ok=True)
        merge_shards(path, expected_fingerprints=fingerprints, force=force)
    else:
        wait_for_merged(path, launch.world_size, fingerprints, timeout=wait)
    return {**summary, "merged": str(path), **facts}
