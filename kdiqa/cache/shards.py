"""Join shard files into one cache through HDF5 virtual datasets (no data is copied).

Shard ``i`` of ``n`` holds a contiguous run of rows (whole batches, see :mod:`kdiqa.cache.plan`); the
merged file at the cache path maps each of its datasets onto the shards' datasets, row range by row
range, with source file names relative to its own folder (HDF5 resolves them there), so the folder can
be moved as a whole. The shard files must stay beside it: readers check that they do.

Processes that write the shards of one cache at the same time (``kdiqa cache`` under torchrun or
SLURM) meet here too: :func:`wait_for_shards` returns when every shard is finished, after which rank 0
merges and the other ranks :func:`wait_for_merged`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kdiqa import __version__
from kdiqa.cache import layout as L
from kdiqa.cache.errors import CacheError
from kdiqa.cache.fingerprint import check_fingerprints
from kdiqa.cache.handles import datasets_of, hdf5_file
from kdiqa.cache.progress import printer
from kdiqa.cache.status import find_shards, incomplete_message, open_readonly, read_header, require_complete
from kdiqa.io import atomic_path

# meta entries that legitimately differ between shards
_PER_SHARD = ("rows", "shard", "compression")

WAIT_SECONDS = 1800.0  # default: how long a missing shard may show no progress before waiting gives up
_POLL_SECONDS = (0.2, 5.0)  # first and longest pause between two looks at the files
_REPORT_SECONDS = 60.0  # how often a waiting process says what it waits for


def merge_shards(
    path: str | os.PathLike,
    *,
    expected_fingerprints: Mapping[str, str] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``path`` as a virtual cache over its finished shards ``<path>.shard-i-of-n.h5``.

    Refuses (one line, naming the shard) when a shard is missing or unfinished, when shards disagree
    on fingerprints or layout, or when their rows do not tile the whole cache. An existing merged file
    that already matches is kept; any other file at ``path`` needs ``force``. Returns a summary dict
    (path, views, shards).
    """
    path = Path(path)
    shards = find_shards(path)
    if not shards:
        raise CacheError(f"{path}: no shard files ({path.name}.shard-i-of-n.h5) to merge")
    if len(shards) > 1:
        counts = ", ".join(str(c) for c in sorted(shards))
        raise CacheError(f"{path}: shard files from runs split {counts} ways lie side by side; delete the stale ones")
    count = next(iter(shards))
    files = shards[count]
    for i in range(count):
        if i not in files or files[i].name.endswith(L.PARTIAL_SUFFIX):
            raise CacheError(incomplete_message(path))
    headers = [read_header(files[i]) for i in range(count)]
    for i, header in enumerate(headers):
        if not header["complete"]:
            raise CacheError(f"{files[i]}: shard is not marked complete; rerun `kdiqa cache RECIPE --shard {i}/{count}`")
    _check_consistent(path, files, headers, expected_fingerprints)

    if path.exists() and not force:
        existing = require_complete(path)
        if sorted(existing["meta"].get("merged_from") or []) == sorted(f.name for f in files.values()) and (
            existing["fingerprints"] == headers[0]["fingerprints"]
        ):
            printer(progress)(f"cache: {path} already joins these {count} shards; nothing to do")
            return {"path": str(path), "views": existing["rows"], "shards": count}
        raise CacheError(f"{path}: a different cache already exists here; pass --force (force=True) to replace it")

    total = headers[0]["meta"]["total_rows"]
    with open_readonly(files[0]) as first:
        specs = {name: (ds.shape[1:], ds.dtype) for name, ds in datasets_of(first).items()}
        attrs = dict(first.attrs)
    meta = dict(headers[0]["meta"])
    meta.update(rows=[0, total], shard=[0, 1], merged_from=[files[i].name for i in range(count)],
                compression=",".join(sorted({h["meta"].get("compression", "none") for h in headers})))
    with atomic_path(path, "the merged teacher cache") as tmp:
        with hdf5_file(tmp, "w") as out:
            for key, value in attrs.items():
                out.attrs[key] = value
            out.attrs[L.ATTR_VERSION] = __version__
            out.attrs[L.ATTR_META] = L.dumps(meta)
            out.attrs[L.ATTR_COMPLETE] = np.int8(1)
            for name, (shape, dtype) in specs.items():
                layout = h5py.VirtualLayout(shape=(total, *shape), dtype=dtype)
                for i, header in enumerate(headers):
                    a, b = header["meta"]["rows"]
                    layout[a:b] = h5py.VirtualSource(files[i].name, name, shape=(b - a, *shape))
                out.create_virtual_dataset(name, layout)
    printer(progress)(f"cache: joined {count} shards into {path} ({total} views, no data copied)")
    return {"path": str(path), "views": total, "shards": count}


def _check_consistent(path: Path, files: dict[int, Path], headers: list[dict[str, Any]],
                      expected: Mapping[str, str] | None) -> None:
    first = headers[0]
    check_fingerprints(str(files[0]), first["fingerprints"], expected, "rebuild the shards for this recipe")
    same_meta = {k: v for k, v in first["meta"].items() if k not in _PER_SHARD}
    layouts = []
    for i, header in enumerate(headers):
        if header["fingerprints"] != first["fingerprints"]:
            differ = sorted(k for k in set(first["fingerprints"]) | set(header["fingerprints"])
                            if first["fingerprints"].get(k) != header["fingerprints"].get(k))
            raise CacheError(f"{files[i]}: {', '.join(differ)} fingerprint differs from shard 0's; rebuild the stale shard")
        meta = {k: v for k, v in header["meta"].items() if k not in _PER_SHARD}
        if meta != same_meta:
            key = next(k for k in set(meta) | set(same_meta) if meta.get(k) != same_meta.get(k))
            raise CacheError(f"{files[i]}: {key!r} differs from shard 0's ({meta.get(key)!r} vs {same_meta.get(key)!r})")
        with open_readonly(files[i]) as f:
            layouts.append({name: (ds.shape[1:], str(ds.dtype)) for name, ds in datasets_of(f).items()})
        if layouts[-1] != layouts[0]:
            raise CacheError(f"{files[i]}: holds other datasets, shapes or dtypes than shard 0")
    position = 0
    for i, header in enumerate(headers):
        a, b = header["meta"]["rows"]
        if a != position:
            raise CacheError(f"{files[i]}: starts at row {a}, expected {position} (shards written with different batch sizes?)")
        position = b
    if position != first["meta"]["total_rows"]:
        raise CacheError(f"{path}: shards hold {position} rows, the cache needs {first['meta']['total_rows']}")


def wait_for_shards(
    path: str | os.PathLike,
    count: int,
    fingerprints: Mapping[str, str],
    *,
    timeout: float = WAIT_SECONDS,
    progress: bool = True,
) -> None:
    """Return once every shard ``<path>.shard-i-of-<count>.h5`` is finished with ``fingerprints``.

    Why the files and not a process group's barrier: the shards already are the ground truth (rank 0
    merges them through the file system, which every rank must therefore share), so no rendezvous
    (``MASTER_ADDR``/``MASTER_PORT``, which ``srun`` does not set, or an open port) is needed, and the
    wait can judge what matters: whether each missing shard is still being written. A rank that died,
    even by SIGKILL or out of memory, stops writing its shard; one that is merely slower keeps
    writing, however long it takes (a barrier would need a timeout longer than the slowest rank's
    whole shard, and NCCL's watchdog stops a barrier after 10 minutes by default).

    A missing shard makes progress when any of its files (the finished shard, its ``.partial``, or a
    temporary being written) changes size or modification time, as seen from here (so clocks of other
    nodes do not matter). One that shows none for ``timeout`` seconds is a one-line CacheError; a
    shard finished with other fingerprints (a stale file its rank has yet to rebuild) counts as missing.
    """
    path = Path(path)
    say = printer(progress)
    names = [L.shard_path(path, i, count) for i in range(count)]
    seen: dict[int, tuple[Any, float]] = {}
    missing = list(range(count))
    pause, reported = _POLL_SECONDS[0], 0.0
    while True:
        missing = [i for i in missing if not _finished(names[i], fingerprints)]  # a finished shard stays finished
        if not missing:
            return
        now = time.monotonic()
        for i in missing:
            signature = _signature(names[i])
            if i not in seen or seen[i][0] != signature:
                seen[i] = (signature, now)
            elif now - seen[i][1] > timeout:
                raise CacheError(_stalled(path, i, count, signature, timeout))
        if now - reported >= _REPORT_SECONDS:
            shown = ", ".join(str(i) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
            say(f"cache: waiting for {len(missing)} of {count} shards to finish (shard {shown})")
            reported = now
        time.sleep(pause)
        pause = min(2 * pause, _POLL_SECONDS[1], timeout / 4)


def wait_for_merged(
    path: str | os.PathLike,
    count: int,
    fingerprints: Mapping[str, str],
    *,
    timeout: float = WAIT_SECONDS,
) -> None:
    """Return once ``path`` is the finished cache joining the ``count`` shards (rank 0 merges them as
    soon as it sees them all finished, which this process has already seen); a CacheError after
    ``timeout`` seconds without it."""
    path = Path(path)
    names = sorted(L.shard_path(path, i, count).name for i in range(count))
    start, pause = time.monotonic(), _POLL_SECONDS[0]
    while True:
        if path.exists():
            try:
                header = require_complete(path)
                if sorted(header["meta"].get("merged_from") or []) == names and header["fingerprints"] == dict(fingerprints):
                    return
            except CacheError:
                pass  # replaced while we looked, or a stale file rank 0 is about to replace
        if time.monotonic() - start > timeout:
            raise CacheError(
                f"{path}: all {count} shards are finished but rank 0 did not merge them within {timeout:g} s; "
                f"join them with `kdiqa cache merge {path}`"
            )
        time.sleep(pause)
        pause = min(2 * pause, _POLL_SECONDS[1], timeout / 4)


def _finished(shard: Path, fingerprints: Mapping[str, str]) -> bool:
    if not shard.exists():
        return False
    try:
        header = read_header(shard)
    except CacheError:
        return False  # being replaced (--force) as we looked: look again
    return header["complete"] and header["fingerprints"] == dict(fingerprints)


def _signature(shard: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of every file a shard's writer changes while it works."""
    partial = L.partial_path(shard)
    files = [shard, partial]
    for name in (shard.name, partial.name):  # temporaries of kdiqa.io.atomic_path: creation, compression
        try:
            files += sorted(shard.parent.glob(f".{name}.*.tmp"))
        except OSError:
            pass
    found = []
    for file in files:
        try:
            st = file.stat()
        except OSError:
            continue
        found.append((file.name, st.st_size, st.st_mtime_ns))
    return tuple(found)


def _stalled(path: Path, index: int, count: int, signature: tuple[tuple[str, int, int], ...], timeout: float) -> str:
    if not signature:
        state = ("no file of it has appeared: did its process start, and do all processes see this folder "
                 "(a cache folder on a node-local disk is not shared)?")
    elif signature[0][0] == L.shard_path(path, index, count).name:
        state = "its file holds another recipe's cache (fingerprints differ): did its process fail?"
    else:
        state = f"{', '.join(name for name, _, _ in signature)} stopped changing: did its process fail?"
    return (f"{path}: shard {index}/{count} made no progress for {timeout:g} s ({state}); "
            "rerun the same command to resume (finished shards are kept)")
