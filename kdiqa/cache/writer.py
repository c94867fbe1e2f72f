"""Write a cache: run the teacher once per (image, view) and store its outputs row by row.

Crash safety rests on one property: after the in-progress file (``<path>.partial``) is created, its
HDF5 structure never changes again. Every dataset is allocated in full when the file is created
(early allocation, no fill, no compression), so writing a batch only overwrites bytes inside space
that already belongs to the dataset; HDF5's metadata (object headers, chunk index, superblock) is
written once, atomically (the file is built under a temporary name and renamed). A process killed at
any instant — SIGKILL included — therefore leaves a file that opens, whose ``done`` mask lists only
batches whose rows were flushed before their mask was set. Rerunning recomputes the unfinished
batches, which are the same batches with the same views (see :mod:`kdiqa.cache.plan`), so the finished
file equals that of an uninterrupted run.

Completion is a rename: the partial file is marked complete and renamed to the cache path, so a file
at the cache path is always finished. Compression cannot be applied in place (compressed chunks change
size), so a compressed cache is written uncompressed and copied into its compressed form once, at the
end, again under a temporary name.

A failing disk (full, read-only) is a one-line error, never a crash: files are written with HDF5's
buffers off and closed so that a failed flush cannot bring the process down (:mod:`kdiqa.cache.handles`);
the partial file stays resumable, and what a killed run left beside a cache is removed by the next.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdiqa.cache import layout as L
from kdiqa.cache.errors import CacheError
from kdiqa.cache.fingerprint import check_fingerprints, compute_fingerprints
from kdiqa.cache.handles import close_quietly, hdf5_file, open_unbuffered
from kdiqa.cache.plan import CachePlan, draw_view
from kdiqa.cache.status import check_merged_sources, open_readonly, read_header
from kdiqa.data.images import load_image
from kdiqa.data.sample import IQASample
from kdiqa.data.views import ViewSampler
from kdiqa.errors import ConfigError, DataError, KdiqaError
from kdiqa.io import atomic_path, os_reason, remove_stale_temporaries

DTYPES = ("float16", "float32")
COMPRESSIONS = ("none", "lzf", "gzip")
GZIP_LEVEL = 4
_REPACK_BYTES = 64 << 20  # rows copied at a time when compressing, so memory stays bounded
_PROGRESS_SECONDS = 2.0

FORCE_HINT = "pass --force (force=True) to rebuild it"
WHAT = "the teacher cache"


def build_cache(
    teacher: nn.Module,
    samples: Sequence[IQASample],
    sampler: ViewSampler,
    path: str | os.PathLike,
    *,
    views_per_image: int = 1,
    first_view_eval: bool = True,
    features: Sequence[str] | None = None,
    pool: Mapping[str, int | Sequence[int]] | None = None,
    dtype: str = "float16",
    compression: str = "none",
    batch_size: int = 32,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    fingerprints: Mapping[str, str] | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_feature_bytes: int = 1 << 20,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Run ``teacher`` on ``views_per_image`` views of every sample and store the outputs at ``path``.

    ``features``: teacher feature names to store (``None``: every feature the teacher returns);
    ``pool``: ``{name: size or (h, w)}`` adaptive average pooling before storing, for maps too large
    to keep whole (a feature above ``max_feature_bytes`` per view is refused unpooled);
    ``shard=(i, n)``: write only this process's share, to ``<path>.shard-i-of-n.h5`` (join them with
    :func:`kdiqa.cache.merge_shards`); ``fingerprints``: extra or overriding digests to record and check
    (by default teacher, dataset, views and targets are computed here).
    Resumes an unfinished run, returns at once if the cache is complete, and refuses a cache whose
    fingerprints differ unless ``force``. Returns a summary dict (path, views, written, skipped,
    seconds, complete, shard).
    """
    started = time.perf_counter()
    _check_choice("cache.dtype", dtype, DTYPES)
    _check_choice("cache.compression", compression, COMPRESSIONS)
    features = None if features is None else list(features)
    pool = {str(k): pool_size(k, v) for k, v in (pool or {}).items()}
    if features is not None:
        stray = [k for k in pool if k not in features]
        if stray:
            raise ConfigError(f"cache.pool: {stray[0]!r} is not in cache.features ({', '.join(features) or 'none'})")
    if views_per_image > 1 and not sampler.train:
        raise ConfigError(
            f"cache.views_per_image: {views_per_image} views need a training view sampler "
            "(random crops/flips); with an evaluation sampler every view is the same whole image"
        )
    count = 1 if shard is None else int(shard[1])
    index = 0 if shard is None else int(shard[0])
    plan = CachePlan(len(samples), int(views_per_image), int(batch_size), index, count)
    target = L.shard_path(path, index, count) if plan.sharded else Path(path)
    partial = L.partial_path(target)

    prints = compute_fingerprints(
        teacher, samples, sampler, views_per_image=plan.views_per_image, first_view_eval=first_view_eval,
        seed=seed, features=["*"] if features is None else features, pool=pool, dtype=dtype,
    )
    prints.update(fingerprints or {})
    if force:
        for stale in (target, partial):
            if stale.exists():
                stale.unlink()
    say = _Printer(progress)
    for stale in (target, partial):
        remove_stale_temporaries(stale)

    if target.exists():
        stored = _read_root(target)
        check_fingerprints(str(target), stored["fingerprints"], prints, FORCE_HINT)
        if not stored["complete"]:
            raise CacheError(f"{target}: exists but is not marked complete (not written by kdiqa?); {FORCE_HINT}")
        check_merged_sources(target, stored)
        _remove_leftover_partial(partial)
        say(f"cache: {target} is complete ({stored['rows']} views); nothing to do")
        summary = _summary(target, plan, 0, plan.rows[1] - plan.rows[0], started, True)
        if any(not math.isfinite(s.mos) for s in samples):
            summary["unreadable"] = _count_unreadable(target)
        return summary

    if partial.exists():
        stored = _read_root(partial)
        check_fingerprints(str(partial), stored["fingerprints"], prints, FORCE_HINT)
        if stored["meta"].get("batch_size") != plan.batch_size:
            say(f"cache: resuming with the batch size the run started with ({stored['meta']['batch_size']})")
            plan = CachePlan(plan.num_images, plan.views_per_image, int(stored["meta"]["batch_size"]), index, count)
        if list(stored["meta"].get("rows", [])) != list(plan.rows):
            raise CacheError(f"{partial}: holds rows {stored['meta'].get('rows')}, this run writes {list(plan.rows)}; {FORCE_HINT}")

    run = _Run(
        teacher=teacher, samples=samples, sampler=sampler, plan=plan, partial=partial, seed=int(seed),
        first_view_eval=bool(first_view_eval), features=features, pool=pool, dtype=dtype,
        fingerprints=prints, max_feature_bytes=int(max_feature_bytes), say=say,
    )
    written, skipped = run.execute(device, int(num_workers))
    try:
        _finalise(partial, target, compression)
    except OSError as exc:
        raise CacheError(
            f"{partial}: cannot write {WHAT}: every view is written but finishing the cache failed ({os_reason(exc)}); "
            "fix the cause (e.g. free disk space) and rerun `kdiqa cache` to finish it"
        ) from None
    say(f"cache: wrote {target} ({written} views computed, {skipped} resumed) in {time.perf_counter() - started:.1f} s")
    summary = _summary(target, plan, written, skipped, started, True)
    if any(not math.isfinite(s.mos) for s in samples):
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


# --------------------------------------------------------------------------------------------------
class _Run:
    """One execution of the write loop over the pending batches of a plan."""

    def __init__(self, *, teacher, samples, sampler, plan, partial, seed, first_view_eval, features, pool,
                 dtype, fingerprints, max_feature_bytes, say) -> None:
        self.teacher: nn.Module = teacher
        self.samples: Sequence[IQASample] = samples
        self.sampler: ViewSampler = sampler
        self.plan: CachePlan = plan
        self.partial: Path = partial
        self.seed = seed
        self.first_view_eval = first_view_eval
        self.features = features
        self.pool = pool
        self.dtype = dtype
        self.fingerprints = dict(fingerprints)
        self.max_feature_bytes = max_feature_bytes
        self.say = say
        self.unreadable: list[str] = []  # why each unreadable pool image met in this run was skipped

    def pending_blocks(self) -> list[tuple[int, int]]:
        blocks = self.plan.blocks()
        if not self.partial.exists():
            return blocks
        start = self.plan.rows[0]
        with _open_partial(self.partial, "r") as f:
            done = f[L.DONE][...]
        return [(a, b) for a, b in blocks if not done[a - start : b - start].all()]

    def execute(self, device: str | torch.device | None, num_workers: int) -> tuple[int, int]:
        pending = self.pending_blocks()
        total = self.plan.rows[1] - self.plan.rows[0]
        todo = sum(b - a for a, b in pending)
        if not pending:
            return 0, total
        dev = _device(self.teacher, device)
        was_training = self.teacher.training
        self.teacher.eval()
        sink: _Sink | None = _Sink(self.partial) if self.partial.exists() else None
        written = 0
        meter = _Meter(self.say, todo, total - todo)
        try:
            with torch.no_grad():
                for batch in self._batches(pending, num_workers):
                    out = self.teacher(batch["images"].to(dev, non_blocking=True))
                    arrays = self._targets(out, batch)
                    self.unreadable += batch["errors"]
                    if sink is None:
                        self._create(arrays)
                        sink = _Sink(self.partial)
                    _write_batch(sink, batch, arrays)
                    written += len(batch["rows"])
                    meter.update(len(batch["rows"]))
        except KdiqaError:
            raise
        except OSError as exc:
            done = total - todo + written
            raise CacheError(
                f"{self.partial}: cannot write {WHAT}: write failed after {done} of {total} views ({os_reason(exc)}); "
                "the file is resumable: fix the cause (e.g. free disk space) and rerun `kdiqa cache`"
            ) from None
        finally:
            if sink is not None:
                sink.close()
            self.teacher.train(was_training)
        return written, total - todo

    def _batches(self, pending: list[tuple[int, int]], num_workers: int) -> Iterator[dict[str, Any]]:
        views = _BlockViews(self.samples, self.sampler, self.plan, pending, self.seed, self.first_view_eval)
        loader = DataLoader(views, batch_size=None, shuffle=False, num_workers=num_workers)
        for item in loader:
            yield {k: (v.numpy() if isinstance(v, torch.Tensor) and k != "images" else v) for k, v in item.items()}

    def _targets(self, out: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Teacher outputs of one batch as the numpy arrays to store (pooled, cast, checked)."""
        n = len(batch["rows"])
        score = getattr(out, "score", None)
        if not isinstance(score, torch.Tensor) or score.numel() != n:
            raise CacheError(f"teacher {_teacher_name(self.teacher)}: score must be a (B,) tensor, got {_shape_of(score)} for B={n}")
        arrays: dict[str, np.ndarray] = {L.SCORE: score.detach().reshape(n).float().cpu().numpy()}
        if out.dist is not None:
            arrays[L.DIST] = out.dist.detach().reshape(n, -1).float().cpu().numpy()
        available = dict(out.features)
        names = list(available) if self.features is None else self.features
        feature_dtype = np.dtype(self.dtype)
        for name in names:
            if name in L.RESERVED_FEATURE_NAMES:
                raise ConfigError(f"cache.features: a feature may not be called {name!r} (reserved for the teacher's {name})")
            if name not in available:
                raise ConfigError(
                    f"cache.features: teacher {_teacher_name(self.teacher)} has no feature {name!r} "
                    f"(it returns: {', '.join(available) or 'none'})"
                )
            tensor = available[name].detach()
            if name in self.pool:
                if tensor.dim() != 4:
                    raise ConfigError(f"cache.pool: {name!r} has shape {tuple(tensor.shape[1:])}; only (C, H, W) maps can be pooled")
                tensor = F.adaptive_avg_pool2d(tensor.float(), self.pool[name])
            with np.errstate(over="ignore"):  # an overflow to inf is reported below, with the image
                arrays[L.feature_dataset(name)] = tensor.float().cpu().numpy().astype(feature_dtype, copy=False)
        skipped = np.asarray(batch.get("bad", np.zeros(n, dtype=bool)), dtype=bool)
        for key, arr in arrays.items():
            finite = np.isfinite(arr.reshape(n, -1)).all(axis=1) | skipped
            if not finite.all():
                bad = int(np.nonzero(~finite)[0][0])
                image = self.samples[self.plan.image_of(int(batch["rows"][bad]))].path
                extra = " (float16 overflows above 65504: set cache.dtype: float32)" if arr.dtype == np.float16 else ""
                raise CacheError(f"{image}: teacher output {key!r} is not finite for this image's view{extra}")
            if skipped.any():
                arr[skipped] = np.nan  # the views of an unreadable pool image hold no target (layout.py)
        return arrays

    def _create(self, arrays: dict[str, np.ndarray]) -> None:
        """Create the in-progress file with every dataset allocated in full (see the module docstring)."""
        start, stop = self.plan.rows
        rows = stop - start
        targets: dict[str, Any] = {}
        for key, arr in arrays.items():
            if key.startswith(L.FEATURES + "/"):
                name = L.feature_name(key)
                per_view = int(np.prod(arr.shape[1:])) * arr.dtype.itemsize
                if per_view > self.max_feature_bytes:
                    raise ConfigError(
                        f"cache.features: {name!r} is {'×'.join(map(str, arr.shape[1:]))} = {per_view / 2**20:.1f} MiB "
                        f"per view as {arr.dtype}; cache it pooled (cache.pool: {{{name}: 8}}) or leave it out"
                    )
                targets[name] = {"dataset": key, "shape": list(arr.shape[1:]), "dtype": str(arr.dtype),
                                 "pool": list(self.pool[name]) if name in self.pool else None}
        from kdiqa import __version__

        meta = {
            "num_images": self.plan.num_images,
            "views_per_image": self.plan.views_per_image,
            "first_view_eval": self.first_view_eval,
            "seed": self.seed,
            "batch_size": self.plan.batch_size,
            "rows": [start, stop],
            "total_rows": self.plan.total_rows,
            "shard": [self.plan.shard_index, self.plan.shard_count],
            "sampler": self.sampler.as_dict(),
            "teacher": getattr(self.teacher, "name", "") or type(self.teacher).__name__,
            "dist_bins": int(arrays[L.DIST].shape[1]) if L.DIST in arrays else None,
            "targets": targets,
            "compression": "none",
        }
        with atomic_path(self.partial, WHAT) as tmp, hdf5_file(tmp, "w") as f:
            f.attrs[L.ATTR_FORMAT] = L.FORMAT
            f.attrs[L.ATTR_FORMAT_VERSION] = L.FORMAT_VERSION
            f.attrs[L.ATTR_VERSION] = __version__
            f.attrs[L.ATTR_FINGERPRINTS] = L.dumps(self.fingerprints)
            f.attrs[L.ATTR_META] = L.dumps(meta)
            f.attrs[L.ATTR_COMPLETE] = np.int8(0)
            _allocate(f, L.INDEX, (rows,), np.int64)
            _allocate(f, L.VIEW_ID, (rows,), np.int32)
            _allocate(f, L.PARAMS, (rows, 6), np.float64)
            _allocate(f, L.MOS, (rows,), np.float32)
            for key, arr in arrays.items():
                chunks = (1, *arr.shape[1:]) if key.startswith(L.FEATURES + "/") else None
                _allocate(f, key, (rows, *arr.shape[1:]), arr.dtype, chunks)
            _allocate(f, L.DONE, (rows,), np.uint8)[...] = 0


class _BlockViews(Dataset):
    """One item per pending batch: its rows' views rendered, each image decoded once per batch."""

    def __init__(self, samples, sampler, plan: CachePlan, blocks, seed: int, first_view_eval: bool) -> None:
        self.samples = samples
        self.sampler = sampler
        self.plan = plan
        self.blocks = blocks
        self.seed = seed
        self.first_view_eval = first_view_eval

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, j: int) -> dict[str, Any]:
        start, stop = self.blocks[j]
        rows = np.arange(start, stop, dtype=np.int64)
        images, params, index, view_id, mos, bad = [], [], [], [], [], []
        errors: list[str] = []
        decoded: dict[int, Any] = {}
        for row in rows:
            i, k = self.plan.image_of(int(row)), self.plan.view_of(int(row))
            if i not in decoded:
                decoded = {i: self._decode(i, errors)}  # rows are image-major: keep one image
            image = decoded[i]
            if image is None:  # an unreadable pool image: a blank stand-in keeps the batch's shape
                p = self.sampler.eval_params()
                images.append(torch.zeros(3, *self.sampler.size))
            else:
                p = draw_view(self.sampler, image.size, self.seed, i, k, self.first_view_eval)
                images.append(self.sampler.apply(image, p))
            bad.append(image is None)
            params.append(p.to_array())
            index.append(i)
            view_id.append(k)
            mos.append(self.samples[i].mos)
        return {
            "rows": rows,
            "images": torch.stack(images),
            "params": np.stack(params),
            "index": np.asarray(index, dtype=np.int64),
            "view_id": np.asarray(view_id, dtype=np.int32),
            "mos": np.asarray(mos, dtype=np.float32),
            "bad": np.asarray(bad, dtype=bool),
            "errors": errors,
        }

    def _decode(self, i: int, errors: list[str]) -> Any:
        """Image ``i``, or None for an unlabelled image that does not decode (its reason goes to ``errors``).

        A user's photo library holds the odd broken file; one must not stop a long cache run. A broken
        *labelled* image is still an error, as in every other stage.
        """
        try:
            return load_image(self.samples[i].path)
        except DataError as exc:
            if math.isfinite(self.samples[i].mos):
                raise
            errors.append(str(exc))
            return None


class _Sink:
    """The open in-progress file, its datasets looked up once: h5py's per-call lookups and selection
    parsing (``ds[a:b] = x``) cost ten times more than the writes themselves."""

    def __init__(self, path: Path) -> None:
        self.file = _open_partial(path, "r+")
        self.row0 = int(L.loads_attr(self.file.attrs[L.ATTR_META])["rows"][0])
        self.datasets: dict[str, h5py.Dataset] = {}
        self.file.visititems(lambda name, obj: self.datasets.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)

    def close(self) -> None:
        self.datasets.clear()  # no dataset handle may outlive its file (kdiqa.cache.handles)
        close_quietly(self.file)


def _write_batch(sink: _Sink, batch: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Store one batch, then mark it done: data is flushed before its mask, so a mask never lies."""
    a = int(batch["rows"][0]) - sink.row0
    rows = np.s_[a : a + len(batch["rows"])]
    columns = {L.INDEX: batch["index"], L.VIEW_ID: batch["view_id"], L.PARAMS: batch["params"], L.MOS: batch["mos"], **arrays}
    for key, value in columns.items():
        ds = sink.datasets.get(key)
        if ds is None:
            raise CacheError(f"{sink.file.filename}: the teacher now returns {key!r}, which this cache does not hold; {FORCE_HINT}")
        ds.write_direct(np.ascontiguousarray(value, dtype=ds.dtype), dest_sel=rows)
    sink.file.flush()
    sink.datasets[L.DONE].write_direct(np.ones(len(batch["rows"]), dtype=np.uint8), dest_sel=rows)
    sink.file.flush()


def _open_partial(path: Path, mode: str) -> h5py.File:
    try:
        return open_unbuffered(path) if mode == "r+" else h5py.File(path, mode)
    except OSError as exc:
        if "lock" in str(exc).lower():
            raise CacheError(f"{path}: locked by another process (is another `kdiqa cache` writing this cache?)") from None
        raise CacheError(f"{path}: cannot open the unfinished cache ({os_reason(exc)}); {FORCE_HINT}") from None


def _remove_leftover_partial(partial: Path) -> None:
    """A ``.partial`` beside a complete cache is what a run killed between finishing the compressed copy
    and deleting its source left; remove it, unless a live writer holds it (it is then that run's)."""
    if not partial.exists():
        return
    try:
        with h5py.File(partial, "r"):  # takes HDF5's lock: fails while another process writes it
            pass
        partial.unlink()
    except OSError:
        pass


def _allocate(f: h5py.File, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None) -> h5py.Dataset:
    """A dataset whose storage exists from the start, so later writes never touch HDF5 metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, dcpl=dcpl, fill_time="never")


def _finalise(partial: Path, target: Path, compression: str) -> None:
    """Mark complete and move into place; compressed caches are copied into their final form first."""
    with hdf5_file(partial, "r") as f:
        done = f[L.DONE][...]
    if not done.all():  # pragma: no cover - execute() only returns after every block
        raise CacheError(f"{partial}: {int((~done.astype(bool)).sum())} views are still missing; rerun `kdiqa cache`")
    if compression == "none":
        with hdf5_file(partial, "r+") as f:
            f.attrs.modify(L.ATTR_COMPLETE, np.int8(1))
            f.flush()
        _fsync(partial)
        os.replace(partial, target)
        return
    _repack(partial, target, compression)
    partial.unlink()


def _repack(source: Path, target: Path, compression: str) -> None:
    """Copy the finished partial file into a compressed one (streaming, bounded memory)."""
    opts: dict[str, Any] = {"compression": compression}
    if compression == "gzip":
        opts["compression_opts"] = GZIP_LEVEL
    with hdf5_file(source, "r") as src, atomic_path(target, WHAT) as tmp:
        with hdf5_file(tmp, "w") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            meta = L.loads_attr(src.attrs[L.ATTR_META])
            meta["compression"] = compression
            dst.attrs[L.ATTR_META] = L.dumps(meta)
            dst.attrs[L.ATTR_COMPLETE] = np.int8(1)
            for key in _dataset_names(src):
                ds = src[key]
                if key.startswith(L.FEATURES + "/"):
                    out = dst.create_dataset(key, shape=ds.shape, dtype=ds.dtype, chunks=(1, *ds.shape[1:]), **opts)
                else:
                    out = dst.create_dataset(key, shape=ds.shape, dtype=ds.dtype)
                step = max(1, _REPACK_BYTES // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
                for a in range(0, ds.shape[0], step):
                    out[a : a + step] = ds[a : a + step]
        _fsync(tmp)


def _dataset_names(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _read_root(path: Path) -> dict[str, Any]:
    try:
        return read_header(path)
    except CacheError as exc:
        raise CacheError(f"{exc}; {FORCE_HINT}") from None


def _summary(target: Path, plan: CachePlan, written: int, skipped: int, started: float, complete: bool) -> dict[str, Any]:
    return {
        "path": str(target),
        "views": plan.rows[1] - plan.rows[0],
        "written": written,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 3),
        "complete": complete,
        "shard": [plan.shard_index, plan.shard_count],
    }


def pool_size(name: Any, value: Any) -> tuple[int, int]:
    size = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size):
        raise ConfigError(f"cache.pool.{name}: need a positive int or [height, width], got {value!r}")
    return int(size[0]), int(size[1])


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _device(teacher: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        dev = torch.device(device)
        teacher.to(dev)
        return dev
    first = next(iter(teacher.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _teacher_name(teacher: nn.Module) -> str:
    return repr(getattr(teacher, "name", "") or type(teacher).__name__)


def _shape_of(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Printer:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)


class _Meter:
    """A progress line every few seconds: views done, rate, time left."""

    def __init__(self, say: _Printer, todo: int, already: int) -> None:
        self.say, self.todo, self.already = say, todo, already
        self.done = 0
        self.start = self.last = time.perf_counter()
        if already:
            say(f"cache: resuming, {already} views already done, {todo} to go")

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < _PROGRESS_SECONDS and self.done < self.todo:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.todo - self.done) / rate if rate > 0 else float("inf")
        self.say(f"cache: {self.done}/{self.todo} views ({100 * self.done / self.todo:.0f}%), {rate:.1f} views/s, {left:.0f} s left")
