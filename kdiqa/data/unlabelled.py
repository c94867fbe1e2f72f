"""The unlabelled pool (``data.unlabelled``): images no human rated, which the teacher labels.

Why: people distil for two reasons — the student is cheaper, and the teacher can label far more images
than humans ever rated (a product's photo library, a crawl; cf. KADIS-700k-style weak labels and
"patient and consistent" distillation on large unlabelled sets). A pool widens the KD student's
training set only: the cache stores teacher targets for its views as for the labelled training views,
label losses skip it, and the label-only baseline, validation and test never see it.

A pool image is an :class:`IQASample` with ``mos = mos_raw = NaN`` and split ``train``
(:func:`is_labelled` tells them apart); the NaN travels into the cache's ``mos`` column, which is how
a cached view says it has no label.

Sources, one per recipe: ``folder`` (searched recursively for :data:`IMAGE_SUFFIXES`), ``csv`` (a
``path`` column, relative to ``root`` or else to the CSV's folder) or ``mini`` (extra crops of the mini
dataset's training photographs, :mod:`kdiqa.data.mini.pool`). Listed files that are missing or listed
twice, and images that are also in the labelled dataset (any split: a test image in the pool would
leak into training), are left out and counted, with one warning. Files that exist but do not decode
are found where they are decoded — the cache stage, or :func:`readable` before online distillation —
and skipped there, so a large pool is not decoded once more just to be checked.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdiqa.config.schema import DataConfig
from kdiqa.data.formats._rows import BadRow, read_csv, require_columns, row_dict
from kdiqa.data.images import IMAGE_SUFFIXES, load_image
from kdiqa.data.mini import DEFAULT_ROOT, make_mini_pool
from kdiqa.data.sample import IQASample
from kdiqa.errors import DataError

__all__ = ["Pool", "is_labelled", "load_pool", "readable", "unlabelled_sample"]


def is_labelled(sample: IQASample) -> bool:
    return math.isfinite(sample.mos)


def unlabelled_sample(path: str | os.PathLike, group: str | None = None) -> IQASample:
    return IQASample(path=os.path.abspath(path), mos=math.nan, mos_raw=math.nan, split="train", group=group)


@dataclass
class Pool:
    """The pool's samples, where they come from (one line) and what was left out (``"path: reason"``)."""

    samples: list[IQASample]
    source: str
    left_out: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"count": len(self.samples), "source": self.source, "left_out": len(self.left_out)}


def load_pool(cfg: DataConfig, labelled: Sequence[IQASample], progress: bool = True) -> Pool | None:
    """The pool ``cfg.unlabelled`` names (None when it names none), without images of ``labelled``."""
    spec = cfg.unlabelled
    if not spec.enabled:
        return None
    left_out: list[str] = []
    if spec.folder:
        source = f"folder {spec.folder}"
        listed = [(path, None) for path in _folder_images(spec.folder)]
    elif spec.csv:
        source = f"csv {spec.csv}"
        listed = _csv_images(spec.csv, spec.root, left_out)
    else:
        root = cfg.root if cfg.root is not None else DEFAULT_ROOT
        source = f"mini: {spec.mini} extra crops of the training photographs and dead leaves cut from them"
        listed = make_mini_pool(root, spec.mini, progress=progress)
    taken = {os.path.abspath(s.path) for s in labelled}
    samples = []
    for path, group in listed:
        if os.path.abspath(path) in taken:
            left_out.append(f"{path}: also an image of the labelled dataset")
        else:
            samples.append(unlabelled_sample(path, group))
    if not samples:
        first = f"; the first left out: {left_out[0]}" if left_out else ""
        raise DataError(f"data.unlabelled: no usable images in {source}{first}")
    if left_out:
        warnings.warn(f"data.unlabelled: left out {len(left_out)} pool entr{'ies' if len(left_out) > 1 else 'y'} "
                      f"({len(samples)} kept); the first: {left_out[0]}", stacklevel=2)
    return Pool(samples, source, left_out)


def _folder_images(folder: str) -> list[str]:
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data.unlabelled.folder: folder not found: {os.path.abspath(folder)}")
    return [os.path.abspath(p) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _csv_images(file: str, root: str | None, left_out: list[str]) -> list[tuple[str, str | None]]:
    if not os.path.isfile(file):
        raise DataError(f"data.unlabelled.csv: file not found: {os.path.abspath(file)}")
    base = os.path.abspath(root if root is not None else os.path.dirname(os.path.abspath(file)))
    if not os.path.isdir(base):
        raise DataError(f"data.unlabelled.root: folder not found: {base}")
    header, records = read_csv(file, file)
    require_columns(file, header, ("path",))
    listed: list[tuple[str, str | None]] = []
    seen: dict[str, int] = {}
    for row_no, fields in records:
        try:
            value = row_dict(header, fields)["path"]
        except BadRow as exc:  # a ragged row: its path may sit in the wrong column
            left_out.append(f"{file} row {row_no}: {exc}")
            continue
        path = os.path.abspath(os.path.join(base, value)) if value else ""
        if not value or not os.path.isfile(path):
            left_out.append(f"{file} row {row_no}: " + (f"image {value!r} not found" if value else "column 'path' is empty"))
        elif path in seen:
            left_out.append(f"{file} row {row_no}: image {value!r} is already listed in row {seen[path]}")
        else:
            seen[path] = row_no
            listed.append((path, None))
    return listed


def readable(samples: Sequence[IQASample], progress: bool = True) -> list[IQASample]:
    """``samples`` without the unlabelled ones that do not decode (one warning counts them).

    For online distillation, which decodes every image each epoch: a corrupt pool file must cost its
    image, not the run. Labelled samples pass unchecked — a broken labelled image is an error, as
    everywhere else.
    """
    kept, bad = [], []
    for sample in tqdm(samples, desc="checking unlabelled images", unit="img", disable=None if progress else True,
                       leave=False):
        if not is_labelled(sample):
            try:
                load_image(sample.path)
            except DataError as exc:
                bad.append(str(exc))
                continue
        kept.append(sample)
    if bad:
        warnings.warn(f"data.unlabelled: skipped {len(bad)} unreadable image{'s' if len(bad) > 1 else ''}; "
                      f"the first: {bad[0]}", stacklevel=2)
    return kept
