"""Write a cache: run the teacher once per (image, view) and store its outputs row by row.

:func:`build_cache` decides what to do with the files it finds (a finished cache: check it and return;
an unfinished one: check it and resume; none: start), runs the write loop (:mod:`kdiqa.cache.loop`) and
finishes the file (:mod:`kdiqa.cache.partial`, which also says why a killed run can always resume).
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdiqa.cache import layout as L
from kdiqa.cache import partial as P
from kdiqa.cache.errors import CacheError
from kdiqa.cache.fingerprint import check_fingerprints
from kdiqa.cache.loop import CacheRun
from kdiqa.cache.plan import CachePlan
from kdiqa.cache.progress import printer
from kdiqa.cache.spec import CacheSpec
from kdiqa.cache.status import check_merged_sources, open_readonly
from kdiqa.data.sample import IQASample
from kdiqa.io import os_reason, remove_stale_temporaries


def build_cache(
    spec: CacheSpec,
    teacher: nn.Module,
    samples: Sequence[IQASample],
    path: str | os.PathLike,
    *,
    shard: tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``teacher`` on ``spec.views_per_image`` views of every sample and store the outputs at ``path``.

    ``shard=(i, n)``: write only this process's share, to ``<path>.shard-i-of-n.h5`` (join them with
    :func:`kdiqa.cache.merge_shards`). Resumes an unfinished run, returns at once if the cache is
    complete, and refuses a cache whose fingerprints differ unless ``force``. Returns a summary dict
    (path, views, written, skipped, seconds, complete, shard; unreadable with an unlabelled pool).
    """
    started = time.perf_counter()
    index, count = shard or (0, 1)
    plan = CachePlan(len(samples), spec.views_per_image, spec.batch_size, int(index), int(count))
    target = L.shard_path(path, plan.shard_index, plan.shard_count) if plan.sharded else Path(path)
    partial = L.partial_path(target)
    prints = spec.fingerprints(teacher, samples)
    if force:
        for stale in (target, partial):
            if stale.exists():
                stale.unlink()
    say = printer(progress)
    for stale in (target, partial):
        remove_stale_temporaries(stale)
    pool_images = any(not math.isfinite(s.mos) for s in samples)

    if target.exists():
        stored = P.read_root(target)
        check_fingerprints(str(target), stored["fingerprints"], prints, P.FORCE_HINT)
        if not stored["complete"]:
            raise CacheError(f"{target}: exists but is not marked complete (not written by kdiqa?); {P.FORCE_HINT}")
        check_merged_sources(target, stored)
        P.remove_leftover(partial)
        say(f"cache: {target} is complete ({stored['rows']} views); nothing to do")
        summary = _summary(target, plan, 0, plan.rows[1] - plan.rows[0], started)
        if pool_images:
            summary["unreadable"] = _count_unreadable(target)
        return summary

    if partial.exists():
        stored = P.read_root(partial)
        check_fingerprints(str(partial), stored["fingerprints"], prints, P.FORCE_HINT)
        if stored["meta"].get("batch_size") != plan.batch_size:
            say(f"cache: resuming with the batch size the run started with ({stored['meta']['batch_size']})")
            plan = CachePlan(plan.num_images, plan.views_per_image, int(stored["meta"]["batch_size"]), plan.shard_index, plan.shard_count)
        if list(stored["meta"].get("rows", [])) != list(plan.rows):
            raise CacheError(f"{partial}: holds rows {stored['meta'].get('rows')}, this run writes {list(plan.rows)}; {P.FORCE_HINT}")

    run = CacheRun(spec, teacher, samples, plan, partial, prints, say)
    written, skipped = run.execute(device, int(num_workers))
    try:
        P.finish(partial, target, spec.compression)
    except OSError as exc:
        raise CacheError(
            f"{partial}: cannot write {P.WHAT}: every view is written but finishing the cache failed ({os_reason(exc)}); "
            "fix the cause (e.g. free disk space) and rerun `kdiqa cache` to finish it"
        ) from None
    say(f"cache: wrote {target} ({written} views computed, {skipped} resumed) in {time.perf_counter() - started:.1f} s")
    summary = _summary(target, plan, written, skipped, started)
    if pool_images:
        summary["unreadable"] = _report_unreadable(target, run.unreadable)
    return summary


def _count_unreadable(target: Path) -> int:
    """Pool images whose views hold no targets, counted from the file (a resumed run counts the ones an
    earlier run met too)."""
    with open_readonly(target) as f:
        return len(np.unique(f[L.INDEX][...][np.isnan(f[L.SCORE][...])]))


def _report_unreadable(target: Path, met: list[str]) -> int:
    """:func:`_count_unreadable`, said once, in one warning, after the run that wrote the file."""
    count = _count_unreadable(target)
    if count:
        first = f"; the first: {met[0]}" if met else ""
        warnings.warn(f"{target}: skipped {count} unreadable unlabelled image{'s' if count > 1 else ''} "
                      f"(their views hold no targets){first}", stacklevel=3)
    return count


def _summary(target: Path, plan: CachePlan, written: int, skipped: int, started: float) -> dict[str, Any]:
    return {"path": str(target), "views": plan.rows[1] - plan.rows[0], "written": written, "skipped": skipped,
            "seconds": round(time.perf_counter() - started, 3), "complete": True, "shard": [plan.shard_index, plan.shard_count]}
