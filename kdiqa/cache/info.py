"""``kdiqa cache info``: what a cache holds and whether it can be used, without reading its data."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from kdiqa.cache import layout as L
from kdiqa.cache.errors import CacheError
from kdiqa.cache.handles import datasets_of
from kdiqa.cache.status import check_merged_sources, find_shards, incomplete_message, open_readonly, read_header


def cache_info(path: str | os.PathLike) -> dict[str, Any]:
    """Facts about the cache at ``path`` (or its partial file, or its shards), as plain JSON data.

    Keys: path, file, complete, status (one line: ready, or what to do), views, views_done, images,
    views_per_image, first_view_eval, seed, teacher, sampler, dtype (of the feature maps), precision (the
    teacher's, when caching), compression, shard, merged_from,
    datasets ({name: shape, dtype, bytes_per_view, chunks, compression}), bytes_per_view, data_bytes,
    file_bytes (on disk, shards included), fingerprints, kdiqa_version, shards (files found beside it),
    and among the views written: labelled_views, unlabelled_views (``data.unlabelled``) and
    unreadable_views (views of unlabelled images that did not decode: no targets).
    """
    path = Path(path)
    partial = L.partial_path(path)
    shards = find_shards(path)
    if path.exists():
        file = path
    elif partial.exists():
        file = partial
    elif shards:
        count = max(shards)
        file = shards[count][min(shards[count])]
    else:
        raise CacheError(f"{path}: no cache here (nor {partial.name}, nor shard files)")
    header = read_header(file, count_done=True)
    meta = header["meta"]
    with open_readonly(file) as f:
        datasets = {
            name: {
                "shape": list(ds.shape[1:]),
                "dtype": str(ds.dtype),
                "bytes_per_view": int(np.prod(ds.shape[1:])) * ds.dtype.itemsize,
                "chunks": list(ds.chunks) if ds.chunks else None,
                "compression": ds.compression,
                "virtual": bool(ds.is_virtual),
            }
            for name, ds in datasets_of(f).items()
        }
        views = _label_counts(f)
    merged_from = meta.get("merged_from") or []
    file_bytes = file.stat().st_size + sum((path.parent / n).stat().st_size for n in merged_from if (path.parent / n).exists())
    bytes_per_view = sum(d["bytes_per_view"] for d in datasets.values())
    complete = header["complete"] and file == path
    if complete:
        try:
            check_merged_sources(path, header)
            status = "complete, ready to read"
        except CacheError as exc:
            complete, status = False, str(exc)
    else:
        status = incomplete_message(path) if file != path else f"{path}: not marked complete"
    return {
        "path": str(path),
        "file": str(file),
        "complete": complete,
        "status": status,
        "views": header["rows"],
        "views_done": header["done"],
        **views,
        "images": meta["num_images"],
        "views_per_image": meta["views_per_image"],
        "first_view_eval": meta["first_view_eval"],
        "seed": meta["seed"],
        "teacher": meta.get("teacher"),
        "sampler": meta.get("sampler"),
        "dtype": meta.get("dtype") or _map_dtype(meta),
        "precision": meta.get("precision", "fp32"),  # caches from before cache.precision are all fp32
        "compression": meta.get("compression"),
        "shard": meta.get("shard"),
        "rows": meta.get("rows"),
        "merged_from": merged_from or None,
        "datasets": datasets,
        "bytes_per_view": bytes_per_view,
        "data_bytes": bytes_per_view * header["rows"],
        "file_bytes": file_bytes,
        "fingerprints": header["fingerprints"],
        "kdiqa_version": header["kdiqa_version"],
        "shards": {str(count): sorted(p.name for p in found.values()) for count, found in shards.items()} or None,
    }


def format_cache_info(info: dict[str, Any]) -> str:
    """The dict of :func:`cache_info` as the text ``kdiqa cache info`` prints."""
    lines = [
        f"cache       {info['path']}" + (f"  (reading {Path(info['file']).name})" if info["file"] != info["path"] else ""),
        f"status      {info['status']}",
        f"views       {info['views_done']}/{info['views']} written  ({info['images']} images × {info['views_per_image']} views"
        + (", view 0 = evaluation view" if info["first_view_eval"] else "") + f", seed {info['seed']})",
        f"teacher     {info['teacher']}",
        f"sampler     {_short(info['sampler'])}",
        f"size        {_bytes(info['bytes_per_view'])} per view, {_bytes(info['data_bytes'])} of data, "
        f"{_bytes(info['file_bytes'])} on disk (compression: {info['compression']})",
        f"targets     {info['dtype']} feature maps, teacher run in {info['precision']}",
    ]
    if info["unlabelled_views"]:
        lines.append(f"labels      {info['labelled_views']} labelled views, {info['unlabelled_views']} unlabelled "
                     f"(of which {info['unreadable_views']} of unreadable images, without targets)")
    if info["shard"] and info["shard"][1] > 1:
        lines.append(f"shard       {info['shard'][0]}/{info['shard'][1]} (rows {info['rows'][0]}..{info['rows'][1]})")
    if info["merged_from"]:
        lines.append(f"merged      {len(info['merged_from'])} shards via virtual datasets: {', '.join(info['merged_from'])}")
    lines.append("datasets    name                              per view            dtype      bytes/view")
    for name, d in info["datasets"].items():
        shape = "×".join(map(str, d["shape"])) or "scalar"
        lines.append(f"            {name:<33} {shape:<19} {d['dtype']:<10} {d['bytes_per_view']}")
    lines.append("fingerprints " + ", ".join(f"{k} {v[:12]}" for k, v in sorted(info["fingerprints"].items())))
    if info["shards"]:
        for count, names in info["shards"].items():
            lines.append(f"shard files {count}-way: {', '.join(names)}")
    lines.append(f"written by  kdiqa {info['kdiqa_version']}")
    return "\n".join(lines)


def _map_dtype(meta: dict[str, Any]) -> str | None:
    """The feature dtype of a cache written before ``meta`` recorded it (float16 or float32)."""
    return next((t["dtype"] for t in meta.get("targets", {}).values()), None)


def _label_counts(f: h5py.File) -> dict[str, int]:
    """Labelled and unlabelled views among those written (see layout.py for what NaN means)."""
    done = f[L.DONE][...].astype(bool)
    mos, score = f[L.MOS][...][done], f[L.SCORE][...][done]
    unlabelled = ~np.isfinite(mos)
    return {"labelled_views": int((~unlabelled).sum()), "unlabelled_views": int(unlabelled.sum()),
            "unreadable_views": int((unlabelled & np.isnan(score)).sum())}


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _short(sampler: Any) -> str:
    if not isinstance(sampler, dict):
        return str(sampler)
    size = "×".join(map(str, sampler.get("size", [])))
    if not sampler.get("train"):
        return f"{size}, evaluation views ({sampler.get('interpolation')})"
    return (f"{size}, random crops scale {sampler.get('scale')} ratio {sampler.get('ratio')}, "
            f"flip {sampler.get('flip')} ({sampler.get('interpolation')})")
