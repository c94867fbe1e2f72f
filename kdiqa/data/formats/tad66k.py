"""TAD66K as released: ``merge/train.csv`` and ``merge/test.csv`` (columns image, score) give the
official train/test split; ``unmerge/`` holds the same rows once more, one CSV per theme.

The label folders may sit in the dataset folder or under ``labels/``; themes are the CSV stems in
``unmerge/`` (or the folder name when the files there are called train/test). Images are flat in
``imgs/`` by default. The authors' code divides the score by 10, so the range is taken as 0-10.
"""

from __future__ import annotations

import os

from kdiqa.data.formats._rows import (
    BadRow,
    Dedup,
    RowPolicy,
    check_range,
    check_root,
    find_first,
    image_path,
    in_range,
    make_sample,
    nonempty,
    number,
    read_csv,
    require_columns,
    require_dir,
    row_dict,
)
from kdiqa.data.sample import IQASample, LoadedDataset
from kdiqa.registry import DATASETS

MOS_RANGE = (0.0, 10.0)
SPLIT_FILES = (("train", "train.csv"), ("test", "test.csv"))
COLUMNS = ("image", "score")
SPLIT_STEMS = {"train", "test", "val"}


def _label_root(root: str) -> str:
    """The folder holding ``merge/``: the dataset folder or its ``labels/`` subfolder."""
    merged = find_first(
        [os.path.join(root, "merge"), os.path.join(root, "labels", "merge")], "tad66k label folder", isdir=True
    )
    return os.path.dirname(merged)


def _themes(label_root: str, root: str, on_bad_row: str, skipped: list[str]) -> dict[str, str]:
    """image name -> theme from the per-theme CSVs; empty when ``unmerge/`` is absent."""
    unmerge = os.path.join(label_root, "unmerge")
    themes: dict[str, str] = {}
    if not os.path.isdir(unmerge):
        return themes
    for folder, dirs, files in os.walk(unmerge):
        dirs.sort()
        for file in sorted(files):
            stem, ext = os.path.splitext(file)
            if ext.lower() != ".csv":
                continue
            theme = os.path.basename(folder) if stem.lower() in SPLIT_STEMS else stem
            path = os.path.join(folder, file)
            name = os.path.relpath(path, root)
            header, records = read_csv(path, name)
            require_columns(name, header, ["image"])  # the score is read from merge/ only
            policy = RowPolicy(name, on_bad_row, skipped)
            for row_no, fields in records:
                with policy.row(row_no):
                    themes.setdefault(row_dict(header, fields)["image"], theme)
    return themes


@DATASETS.register("tad66k")
def load_tad66k(
    root: str,
    *,
    on_bad_row: str = "error",
    image_dir: str = "imgs",
    score_range: tuple[float, float] | None = None,
) -> LoadedDataset:
    """TAD66K; official train/test split, ``theme`` from ``unmerge/``; ``score_range`` overrides 0-10."""
    mos_range = MOS_RANGE if score_range is None else check_range(score_range, "tad66k", "score_range")
    root = check_root(root, "tad66k")
    label_root = _label_root(root)
    images = require_dir(os.path.join(root, image_dir), "tad66k image folder")
    skipped: list[str] = []
    themes = _themes(label_root, root, on_bad_row, skipped)

    seen = Dedup()
    samples: list[IQASample] = []
    for split, file in SPLIT_FILES:
        path = find_first([os.path.join(label_root, "merge", file)], f"tad66k {split} label file")
        name = os.path.relpath(path, root)
        header, records = read_csv(path, name)
        require_columns(name, header, COLUMNS)
        policy = RowPolicy(name, on_bad_row, skipped)
        for row_no, fields in records:
            with policy.row(row_no):
                row = row_dict(header, fields)
                image = image_path(images, row["image"])
                score = in_range(number(row["score"], "score"), *mos_range, "score")
                try:
                    seen.check(image, f"{row_no} of {name}")
                except BadRow as exc:
                    raise BadRow(f"{exc} (an image may be in only one split)") from None
                theme = themes.get(row["image"]) if themes else None
                samples.append(make_sample(image, score, mos_range, split=split, theme=theme))
    return nonempty(
        LoadedDataset(name="tad66k", samples=samples, mos_range=mos_range, skipped=skipped, has_official_split=True)
    )
