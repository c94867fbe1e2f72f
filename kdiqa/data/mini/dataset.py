"""The mini dataset's folder (:func:`make_mini`) and the registered ``mini`` dataset that reads it.

Sample ``i`` of split ``s`` (0, 1, 2: train, val, test) is drawn from ``default_rng([seed, s, i])``
(:mod:`.synthesis`) and labelled in batches (:mod:`.label`), so a sample depends only on the seed, its
split and its index, and the folder is byte-identical whatever the number of worker processes.

Output (``root``): ``images/{split}/{i:06d}.png``, ``labels.csv`` in the generic CSV format
(``path,mos,std,split,group``; ``group`` is the photograph's name, ``std`` empty), ``details.csv``
(distortion, level and crop of every sample, for analysis) and ``meta.json``. The folder is built
beside ``root`` and moved into place in one ``os.replace``, so a folder named ``root`` is always
complete; a complete folder made with the same parameters is reused.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kdiqa.data.distortions import DISTORTIONS
from kdiqa.data.formats.csv_generic import load_csv
from kdiqa.data.mini.label import LABEL_BATCH, LABEL_DEFINITION, pseudo_mos
from kdiqa.data.mini.photographs import held_out_split, load_photographs, photo_images, split_photographs
from kdiqa.data.mini.synthesis import CLEAN_FRACTION, MIN_GRADIENT, MIN_STD, SampleSpec, make_sample
from kdiqa.data.mini.workers import CHUNK, run_jobs
from kdiqa.data.sample import SPLITS, LoadedDataset
from kdiqa.errors import DataError
from kdiqa.io import atomic_folder
from kdiqa.registry import DATASETS

VERSION = 1
KIND = "kdiqa-mini"
DEFAULT_ROOT = "data/mini"

ChunkResult = tuple[list[float], list[SampleSpec]]  # the labels and specs of one job's samples, in order


def read_meta(folder: Path) -> dict[str, Any]:
    """The folder's meta.json, or {} when it is missing or unreadable (then the folder is not ours)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _is_complete(root: Path, params: dict[str, Any]) -> bool:
    """A folder made by make_mini with these parameters (meta.json is written last)."""
    meta = read_meta(root)
    if meta.get("kind") != KIND or meta.get("params") != params:
        return False
    try:
        with open(root / "labels.csv", newline="") as f:
            n_rows = sum(1 for _ in f) - 1
    except OSError:
        return False
    return n_rows == params["n_train"] + params["n_val"] + params["n_test"]


def _is_ours(root: Path) -> bool:
    """Only folders that make_mini wrote (or empty ones) may be replaced: never a user's own data."""
    return not any(root.iterdir()) or read_meta(root).get("kind") == KIND


def _build_chunk(
    tmp: str, split: str, split_index: int, start: int, stop: int, size: int, seed: int, names: list[str]
) -> ChunkResult:
    """Make, label and write samples [start, stop) of one split; returns labels and specs in order."""
    photos = photo_images(names)
    refs, dists, specs = [], [], []
    for i in range(start, stop):
        ref, dist, spec = make_sample(photos, names, size, np.random.default_rng([seed, split_index, i]))
        refs.append(ref)
        dists.append(dist)
        specs.append(spec)
        Image.fromarray(dist).save(os.path.join(tmp, "images", split, f"{i:06d}.png"), compress_level=1)
    labels = [pseudo_mos(np.stack(refs[k : k + LABEL_BATCH]), np.stack(dists[k : k + LABEL_BATCH]))
              for k in range(0, len(refs), LABEL_BATCH)]
    labels = np.concatenate(labels) if labels else np.zeros(0)
    return [float(v) for v in labels], specs


def make_mini(
    root: str | Path,
    *,
    size: int = 64,
    n_train: int = 6000,
    n_val: int = 600,
    n_test: int = 600,
    seed: int = 0,
    held_out: dict[str, Sequence[str]] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Build (or reuse) the mini dataset in ``root``; returns the path of its ``labels.csv``.

    ``workers`` > 0 builds in that many processes, 0 in this one, None one per core for large builds
    (:func:`kdiqa.data.mini.workers.default_workers`); the result is byte-identical whatever the number.
    ``held_out`` ({"val": [...], "test": [...]}) replaces the seeded split by photograph with an explicit one.
    ``progress`` shows a bar on a terminal (never in a log: tqdm draws it with carriage returns).
    """
    root = Path(root)
    if size < 24:
        raise DataError(f"mini dataset: size {size} is too small (three MS-SSIM scales need at least 24 px)")
    for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise DataError(f"mini dataset: {key} must be >= 0, got {n}")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"mini dataset: seed must be a non-negative integer, got {seed!r}")
    held = None if held_out is None else {k: sorted(held_out[k]) for k in held_out}
    params: dict[str, Any] = {"version": VERSION, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed}
    if held is not None:  # only when given, so folders made before this option still match
        params["held_out"] = held
    if _is_complete(root, params):
        return root / "labels.csv"
    if root.exists() and (not root.is_dir() or not _is_ours(root)):
        raise DataError(f"{root}: exists and is not a mini dataset folder made by kdiqa; refusing to overwrite it")

    photos = load_photographs()
    splits = split_photographs(list(photos), seed) if held is None else held_out_split(list(photos), held)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    with atomic_folder(root, force=True, finished_elsewhere=lambda folder: _is_complete(folder, params)) as tmp:
        jobs = []
        for split_index, split in enumerate(SPLITS):
            (tmp / "images" / split).mkdir(parents=True)
            for start in range(0, counts[split], CHUNK):
                stop = min(start + CHUNK, counts[split])
                jobs.append((str(tmp), split, split_index, start, stop, size, seed, splits[split]))
        results = run_jobs(_build_chunk, jobs, [job[4] - job[3] for job in jobs], workers, "mini dataset", progress)
        _write_tables(tmp, jobs, results)
        per_type: dict[str, int] = {}
        for _, specs in results:
            for s in specs:
                per_type[s.distortion] = per_type.get(s.distortion, 0) + 1
        meta = {
            "kind": KIND,
            "params": params,
            "version": VERSION,
            "seed": seed,
            "size": size,
            "counts": counts,
            "photographs": splits,
            "source": "scikit-image sample photographs (skimage.data), grey ones copied to RGB",
            "distortions": {
                d.name: {"parameter": d.parameter, "mild": d.mild, "strong": d.strong} for d in DISTORTIONS.values()
            },
            "samples_per_distortion": dict(sorted(per_type.items())),
            "clean_fraction": CLEAN_FRACTION,
            "crop": f"side = size / U(0.5, 1) (capped at the short side), random position, bicubic resize, flip p=0.5; "
            f"rejected if grey std < {MIN_STD} or mean gradient magnitude < {MIN_GRADIENT} (0-255)",
            "label": LABEL_DEFINITION,
        }
        # meta.json is written last: a folder without it is never taken as complete.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root / "labels.csv"


def _write_tables(tmp: Path, jobs: list[tuple], results: list[ChunkResult]) -> None:
    labels = io.StringIO(newline="")
    details = io.StringIO(newline="")
    lw = csv.writer(labels, lineterminator="\n")
    dw = csv.writer(details, lineterminator="\n")
    lw.writerow(["path", "mos", "std", "split", "group"])
    dw.writerow(["path", "distortion", "level", "parameter", "photo", "x", "y", "side", "flip"])
    for job, (mos, specs) in zip(jobs, results, strict=True):
        split, start = job[1], job[3]
        for k, (q, s) in enumerate(zip(mos, specs, strict=True)):
            path = f"images/{split}/{start + k:06d}.png"
            lw.writerow([path, f"{q:.6f}", "", split, s.photo])
            dw.writerow(
                [path, s.distortion, f"{s.level:.6f}", f"{s.parameter:.6g}", s.photo, s.x, s.y, s.side, int(s.flip)]
            )
    (tmp / "labels.csv").write_text(labels.getvalue())
    (tmp / "details.csv").write_text(details.getvalue())


@DATASETS.register("mini")
def mini(
    root: str = DEFAULT_ROOT,
    *,
    on_bad_row: str = "error",
    size: int = 64,
    n_train: int = 6000,
    n_val: int = 600,
    n_test: int = 600,
    seed: int = 0,
    held_out: dict[str, list[str]] | None = None,
) -> LoadedDataset:
    """The embedded default dataset, built in ``root`` on first use and read through the ``csv`` loader."""
    make_mini(root, size=size, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, held_out=held_out)
    loaded = load_csv(root, file="labels.csv", mos_range=[0, 1], on_bad_row=on_bad_row)
    loaded.name = "mini"
    loaded.has_official_split = True
    return loaded
