"""The in-progress cache file: created whole, filled batch by batch, finished by a rename.

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

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kdiqa import __version__
from kdiqa.cache import layout as L
from kdiqa.cache.errors import CacheError
from kdiqa.cache.handles import close_quietly, datasets_of, hdf5_file, open_unbuffered
from kdiqa.cache.status import read_header
from kdiqa.io import atomic_path, os_reason

# gzip level 4, and HDF5's byte-shuffle filter before gzip or lzf: lossless and in every HDF5 build.
# Measured on the quickstart's maps (benchmarks/cache_compact.py): shuffle shrinks compressed float16 and
# float32 maps by 6-13 % (a no-op on int8's one-byte codes); gzip levels 1, 4 and 9 differ by about 3 % in
# size, and level 9 writes up to 5x slower
GZIP_LEVEL = 4
SHUFFLE = True
_REPACK_BYTES = 64 << 20  # rows copied at a time when compressing, so memory stays bounded

FORCE_HINT = "pass --force (force=True) to rebuild it"
WHAT = "the teacher cache"


def create(partial: Path, fingerprints: dict[str, str], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Create the in-progress file with every dataset allocated in full, shaped like one batch's ``arrays``."""
    rows = meta["rows"][1] - meta["rows"][0]
    with atomic_path(partial, WHAT) as tmp, hdf5_file(tmp, "w") as f:
        f.attrs[L.ATTR_FORMAT] = L.FORMAT
        f.attrs[L.ATTR_FORMAT_VERSION] = L.FORMAT_VERSION
        f.attrs[L.ATTR_VERSION] = __version__
        f.attrs[L.ATTR_FINGERPRINTS] = L.dumps(fingerprints)
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


def _allocate(f: h5py.File, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...] | None = None) -> h5py.Dataset:
    """A dataset whose storage exists from the start, so later writes never touch HDF5 metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, dcpl=dcpl, fill_time="never")


class Sink:
    """The open in-progress file, its datasets looked up once: h5py's per-call lookups and selection
    parsing (``ds[a:b] = x``) cost ten times more than the writes themselves."""

    def __init__(self, path: Path) -> None:
        self.file = open_partial(path, "r+")
        self.row0 = int(L.loads_attr(self.file.attrs[L.ATTR_META])["rows"][0])
        self.datasets = datasets_of(self.file)

    def close(self) -> None:
        self.datasets.clear()  # no dataset handle may outlive its file (kdiqa.cache.handles)
        close_quietly(self.file)


def write_batch(sink: Sink, batch: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
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


def open_partial(path: Path, mode: str) -> h5py.File:
    try:
        return open_unbuffered(path) if mode == "r+" else h5py.File(path, mode)
    except OSError as exc:
        if "lock" in str(exc).lower():
            raise CacheError(f"{path}: locked by another process (is another `kdiqa cache` writing this cache?)") from None
        raise CacheError(f"{path}: cannot open the unfinished cache ({os_reason(exc)}); {FORCE_HINT}") from None


def read_root(path: Path) -> dict[str, Any]:
    try:
        return read_header(path)
    except CacheError as exc:
        raise CacheError(f"{exc}; {FORCE_HINT}") from None


def remove_leftover(partial: Path) -> None:
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


def finish(partial: Path, target: Path, compression: str) -> None:
    """Mark complete and move into place; compressed caches are copied into their final form first."""
    with hdf5_file(partial, "r") as f:
        done = f[L.DONE][...]
    if not done.all():  # pragma: no cover - the write loop only returns after every block
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
    opts: dict[str, Any] = {"compression": compression, "shuffle": SHUFFLE}
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
            for key, ds in datasets_of(src).items():
                if key.startswith(L.FEATURES + "/"):
                    out = dst.create_dataset(key, shape=ds.shape, dtype=ds.dtype, chunks=(1, *ds.shape[1:]), **opts)
                else:
                    out = dst.create_dataset(key, shape=ds.shape, dtype=ds.dtype)
                step = max(1, _REPACK_BYTES // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:]))))
                for a in range(0, ds.shape[0], step):
                    out[a : a + step] = ds[a : a + step]
        _fsync(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
