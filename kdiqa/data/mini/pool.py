"""Extra unlabelled crops of the mini dataset's training photographs: ``data.unlabelled: {mini: N}``.

Why: the embedded default must show the reason people distil — the teacher can label far more images
than humans rated — so it needs a pool beside its labelled set. Like a product's photo library next
to a rated set, the pool is also *more varied* than the labelled crops: made like the shipped
teacher's training stream (:func:`kdiqa.data.mini.stream.augmented_sample`), each image is a
content-augmented crop of a *training* photograph (wider scale range, rotation, channel permutation,
grey, exposure) or, for half of them (:data:`kdiqa.data.mini.dead_leaves.SHARE`), a dead-leaves image cut from those
photographs, distorted like the training samples. The variety is what the teacher was fitted on and
what carries its judgement to unseen photographs. Measured on the quickstart (one run each): with the
first teacher (test SRCC 0.49), a KD student from plain crops scored 0.44, from augmented crops 0.48;
with the shipped teacher (0.61, fitted with dead leaves), from augmented crops alone 0.12, from this
pool 0.52. Its own seed stream ``numpy.random.default_rng([seed, POOL_STREAM, i])`` (the
labelled splits use streams 0, 1, 2; the teacher's stream 1000+) means no pool crop repeats a
labelled one, and validation and test photographs are never touched. No label is computed: the
MS-SSIM pseudo-MOS is what the labelled set has and the pool lacks, and skipping it also makes the
pool cheap.

Output: ``<mini root>/unlabelled-<N>/images/{i:06d}.png`` and ``list.csv`` (``path,group``: the
photograph, for analysis; no label column), then ``meta.json``, written last. The folder is built
under a temporary name and moved into place, so a folder with that name is always complete; a
complete one made with the same parameters is reused, and it depends only on the dataset's seed,
size and training photographs (read from the built dataset's ``meta.json``), so it is deterministic.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from kdiqa.data.mini.dataset import KIND, read_meta
from kdiqa.data.mini.dead_leaves import SHARE as DEAD_LEAVES_SHARE
from kdiqa.data.mini.photographs import load_photographs, photo_images
from kdiqa.data.mini.stream import augmented_sample
from kdiqa.data.mini.workers import CHUNK, run_jobs
from kdiqa.errors import DataError
from kdiqa.io import atomic_folder

POOL_VERSION = 3  # 2: content-augmented crops; 3: half of them dead-leaves images, as in the teacher's stream
POOL_KIND = "kdiqa-mini-unlabelled"
POOL_STREAM = 3  # seed stream of pool crops: after the train/val/test streams 0, 1, 2 of make_mini
# How meta.json says the crops were made. The module was kdiqa.data.mini_stream when pools were first
# written; it is now kdiqa.data.mini.stream, but the text stays so that a pool's files keep their bytes.
MADE = "kdiqa.data.mini_stream.augmented_sample on the training photographs; no labels computed"


def make_mini_pool(root: str | Path, n: int, progress: bool = True, workers: int | None = None) -> list[tuple[str, str]]:
    """Build (or reuse) ``n`` unlabelled crops beside the mini dataset in ``root``; returns
    ``(absolute path, photograph)`` per crop, in order. ``workers``: as for :func:`kdiqa.data.mini.make_mini`."""
    root = Path(root)
    if n < 1:
        raise DataError(f"data.unlabelled.mini: need at least 1 crop, got {n}")
    meta = read_meta(root)
    if meta.get("kind") != KIND:
        raise DataError(f"{root}: no mini dataset here (meta.json missing or not made by kdiqa); build it first")
    params = {"version": POOL_VERSION, "n": n, "size": meta["size"], "seed": meta["seed"],
              "photographs": sorted(meta["photographs"]["train"])}
    folder = root / f"unlabelled-{n}"
    if not _is_complete(folder, params):
        _build(folder, params, progress, workers)
    with open(folder / "list.csv", newline="") as f:
        return [(str(folder / row["path"]), row["group"]) for row in csv.DictReader(f)]


def _is_complete(folder: Path, params: dict) -> bool:
    meta = read_meta(folder)
    return meta.get("kind") == POOL_KIND and meta.get("params") == params


def _build(folder: Path, params: dict, progress: bool, workers: int | None) -> None:
    names = params["photographs"]
    missing = sorted(set(names) - set(load_photographs(names)))
    if missing:
        raise DataError(f"mini pool: training photographs {', '.join(missing)} no longer load")
    with atomic_folder(folder, force=True, finished_elsewhere=lambda f: _is_complete(f, params)) as tmp:
        (tmp / "images").mkdir()
        n = params["n"]
        jobs = [(str(tmp), start, min(start + CHUNK, n), params) for start in range(0, n, CHUNK)]
        groups = run_jobs(_build_chunk, jobs, [job[2] - job[1] for job in jobs], workers, "mini unlabelled pool", progress)
        listing = io.StringIO(newline="")
        writer = csv.writer(listing, lineterminator="\n")
        writer.writerow(["path", "group"])
        writer.writerows([_image_name(i), photo] for i, photo in enumerate(p for chunk in groups for p in chunk))
        (tmp / "list.csv").write_text(listing.getvalue())
        meta = {"kind": POOL_KIND, "params": params, "stream": POOL_STREAM, "made": MADE}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # last: marks the folder complete


def _image_name(i: int) -> str:
    return f"images/{i:06d}.png"


def _build_chunk(tmp: str, start: int, stop: int, params: dict) -> list[str]:
    """Make and write pool images [start, stop); returns each one's photograph ("dead_leaves" for those)."""
    names = params["photographs"]
    photos = photo_images(names)
    groups = []
    for i in range(start, stop):
        rng = np.random.default_rng([params["seed"], POOL_STREAM, i])
        _, distorted, photo = augmented_sample(photos, names, params["size"], rng, dead_leaves=DEAD_LEAVES_SHARE)
        Image.fromarray(distorted).save(Path(tmp) / _image_name(i), compress_level=1)
        groups.append(photo)
    return groups
