"""HDF5 files opened and closed so that a failing disk is an error, never a crash.

On a full disk, closing an HDF5 file fails (it flushes), and h5py leaves such a file half-closed;
freeing its h5py objects afterwards crashed the process with SIGSEGV (seen as exit 139 right after
the correct error message). Two rules keep that from happening: a file written during a run is opened
with HDF5's raw-data buffers off (:func:`open_unbuffered`), so a failed write fails where it is made
and close has nothing left to write; and a file whose close fails anyway is kept referenced until the
process exits (:func:`close_quietly`) instead of being freed half-closed.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

import h5py

from kdiqa.io import as_os_error

# files whose close failed, with the errno it failed with: never freed while the process runs
_ABANDONED: list[tuple[h5py.File, int]] = []


def open_unbuffered(path: str | os.PathLike, mode: str = "r+") -> h5py.File:
    """A file opened for writing (``"r+"``, or created: ``"w"``) with the chunk cache and sieve buffer off.

    Why: with them on, written bytes may still sit in a buffer after the call that wrote them (and
    after the cache's done flag is set); a full disk then fails at a later flush, in a dataset's
    finaliser (where h5py can only print the error) or at close, and HDF5 2.0 crashed after such
    failures. Without them each write reaches the file in the call that makes it, and fails there.
    Every cache row is its own chunk and is written whole, so the buffers saved nothing.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_sieve_buf_size(0)
    mdc, slots, _, w0 = fapl.get_cache()
    fapl.set_cache(mdc, slots, 0, w0)
    name = os.fsencode(path)
    if mode == "w":
        return h5py.File(h5py.h5f.create(name, h5py.h5f.ACC_TRUNC, fapl=fapl))
    if mode == "r+":
        return h5py.File(h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=fapl))
    raise ValueError(f"open_unbuffered: mode {mode!r} is not 'w' or 'r+'")


@contextmanager
def hdf5_file(path: str | os.PathLike, mode: str) -> Iterator[h5py.File]:
    """``h5py.File(path, mode)`` as a context whose failed write or close is an OSError, never a crash
    (files opened for writing are unbuffered: :func:`open_unbuffered`)."""
    f = open_unbuffered(path, mode) if mode in ("w", "r+") else h5py.File(path, mode)
    try:
        yield f
    except BaseException as exc:
        close_quietly(f)
        cause = as_os_error(exc)
        if cause is exc:
            raise
        raise cause from exc  # h5py reports some failed writes as RuntimeError, errno in the text
    if not close_quietly(f):
        raise OSError(_ABANDONED[-1][1] or errno.EIO, f"{path}: closing the HDF5 file failed")


def open_dataset(f: h5py.File, name: str, chunk_cache: tuple[int, int]) -> h5py.Dataset:
    """``f[name]`` with its own HDF5 chunk cache of ``(bytes, slots)`` (the reader's choice: see
    ``kdiqa.cache.reader.READ_CHUNK_CACHE``)."""
    nbytes, nslots = chunk_cache
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(nslots, nbytes, 0.75)
    # readonly: h5py keeps the dataset's shape and type instead of asking HDF5 again on every read (which made
    # a one-row read 3-4x slower here)
    return h5py.Dataset(h5py.h5d.open(f.id, name.encode(), dapl=dapl), readonly=f.mode == "r")


def datasets_of(f: h5py.File) -> dict[str, h5py.Dataset]:
    """Every dataset of an open cache file, by path, sorted."""
    found: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return dict(sorted(found.items()))


def close_quietly(f: h5py.File) -> bool:
    """Close ``f``; False (and ``f`` kept referenced, see the module docstring) if closing failed.

    Used after an error too, where the original error is the one to report.
    """
    try:
        f.close()
    except Exception as exc:  # noqa: BLE001 - h5py raises several types here
        cause = as_os_error(exc)
        _ABANDONED.append((f, getattr(cause, "errno", None) or 0))
        return False
    return True
