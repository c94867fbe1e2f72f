"""Where a cache stands: finished, in progress, split into shards, or absent — and what to do next.

Readers, ``cache info`` and the shard merger all ask the same questions of a path; the answers and
their one-line error messages live here so that every entry point says the same thing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from kdiqa.cache import layout as L
from kdiqa.cache.errors import CacheError

FINISH_HINT = "rerun `kdiqa cache RECIPE` (same recipe) to finish it"


def open_readonly(path: str | os.PathLike) -> h5py.File:
    """Every read-only open of a cache file goes through here, without HDF5's file lock.

    A writer holds the lock while it runs, and ``cache info`` should still show its progress; reading
    is safe because finished caches never change and a running writer never changes the structure.
    HDF5 also refuses to open one file twice in a process with different locking flags, so all
    readers must agree on one.
    """
    return h5py.File(path, "r", locking=False)


def read_header(path: str | os.PathLike, count_done: bool = False) -> dict[str, Any]:
    """Attributes of a cache file (fingerprints, meta, complete, rows; ``done`` rows if asked)."""
    path = Path(path)
    try:
        with open_readonly(path) as f:
            if f.attrs.get(L.ATTR_FORMAT) != L.FORMAT:
                raise CacheError(f"{path}: not a kdiqa feature cache (no {L.ATTR_FORMAT!r} attribute)")
            meta = L.loads_attr(f.attrs[L.ATTR_META])
            header = {
                "fingerprints": L.loads_attr(f.attrs[L.ATTR_FINGERPRINTS]),
                "meta": meta,
                "complete": bool(f.attrs[L.ATTR_COMPLETE]),
                "rows": int(meta["rows"][1] - meta["rows"][0]),
                "kdiqa_version": str(f.attrs.get(L.ATTR_VERSION, "")),
            }
            if count_done:
                header["done"] = int(f[L.DONE][...].astype(bool).sum()) if not meta.get("merged_from") else header["rows"]
            return header
    except CacheError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise CacheError(f"{path}: cannot read cache file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def find_shards(path: str | os.PathLike) -> dict[int, dict[int, Path]]:
    """Shard files of ``path`` on disk, finished or in progress: ``{count: {index: file}}``."""
    path = Path(path)
    found: dict[int, dict[int, Path]] = {}
    if not path.parent.is_dir():
        return found
    prefix = path.name + ".shard-"
    for entry in path.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix):
            continue
        stem = name[: -len(L.PARTIAL_SUFFIX)] if name.endswith(L.PARTIAL_SUFFIX) else name
        parsed = L.parse_shard_name(stem)
        if parsed is None or stem != L.shard_path(path, *parsed).name:
            continue
        index, count = parsed
        # a finished shard wins over a leftover partial of the same shard
        if not name.endswith(L.PARTIAL_SUFFIX) or index not in found.get(count, {}):
            found.setdefault(count, {})[index] = path.parent / name
    return found


def incomplete_message(path: Path) -> str:
    """Why ``path`` cannot be read yet, as one line that says how to get there."""
    partial = L.partial_path(path)
    if partial.exists():
        header = read_header(partial, count_done=True)
        return (
            f"{path}: cache is incomplete ({header['done']} of {header['rows']} views written, in {partial.name}); "
            f"{FINISH_HINT}"
        )
    shards = find_shards(path)
    if shards:
        count = max(shards)
        missing = [i for i in range(count) if i not in shards[count] or shards[count][i].name.endswith(L.PARTIAL_SUFFIX)]
        if missing:
            return (
                f"{path}: cache is split into {count} shards and shard {missing[0]}/{count} is not finished; run "
                f"`kdiqa cache RECIPE --shard {missing[0]}/{count}`, then `kdiqa cache merge {path}`"
            )
        return f"{path}: cache is split into {count} finished shards; join them with `kdiqa cache merge {path}`"
    return f"{path}: no cache here; build it with `kdiqa cache RECIPE`"


def check_merged_sources(path: Path, header: dict[str, Any]) -> None:
    """A merged cache reads its shards through HDF5 virtual datasets, which silently return fill values
    for a missing source file: so every shard must be checked to exist, be finished and still match."""
    for name in header["meta"].get("merged_from") or []:
        source = path.parent / name
        if not source.exists():
            raise CacheError(f"{path}: shard file {name} it joins is missing; rebuild that shard and rerun `kdiqa cache merge {path}`")
        shard = read_header(source)
        if not shard["complete"]:
            raise CacheError(f"{path}: shard file {name} it joins is not complete; {FINISH_HINT}")
        if shard["fingerprints"] != header["fingerprints"]:
            raise CacheError(f"{path}: shard file {name} was rewritten since the merge (fingerprints differ); rerun `kdiqa cache merge {path} --force`")


def require_complete(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a finished cache at ``path``, or a one-line CacheError saying how to finish it."""
    path = Path(path)
    if not path.exists():
        raise CacheError(incomplete_message(path))
    header = read_header(path)
    if not header["complete"]:
        raise CacheError(f"{path}: cache is not marked complete; {FINISH_HINT}")
    check_merged_sources(path, header)
    return header
