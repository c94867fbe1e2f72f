"""KonIQ-10k as released: ``koniq10k_scores_and_distributions.csv`` plus an image folder per resolution.

The official train/validation/test split is not in the scores file; it ships separately (in the
KonIQ GitHub repository's ``metadata/``) as ``koniq10k_distributions_sets.csv`` with a ``set``
column. It is used when present, in the dataset folder or its ``metadata/`` subfolder.
"""

from __future__ import annotations

import os

from kdiqa.data.formats._rows import (
    BadRow,
    Dedup,
    RowPolicy,
    check_root,
    image_path,
    in_range,
    make_sample,
    nonempty,
    number,
    read_csv,
    require_columns,
    require_dir,
    require_file,
    row_dict,
)
from kdiqa.data.sample import IQASample, LoadedDataset
from kdiqa.errors import ConfigError, DataError
from kdiqa.registry import DATASETS

SCORES_FILE = "koniq10k_scores_and_distributions.csv"
SETS_FILE = "koniq10k_distributions_sets.csv"
MOS_RANGE = (1.0, 5.0)  # the release's MOS is the mean of 1..5 ACR ratings (the 0-100 MOS_zscore is not used)
RESOLUTIONS = ("1024x768", "512x384")  # preference order when the recipe does not choose
SET_NAMES = {"training": "train", "validation": "val", "test": "test"}


def _image_folder(root: str, resolution: str | None) -> str:
    if resolution is None:
        for candidate in RESOLUTIONS:
            if os.path.isdir(os.path.join(root, candidate)):
                return os.path.join(root, candidate)
        expected = " or ".join(os.path.join(root, r) for r in RESOLUTIONS)
        raise DataError(f"koniq10k: image folder not found: expected {expected}")
    if resolution not in RESOLUTIONS:
        raise ConfigError(
            f"koniq10k: resolution must be one of {', '.join(map(repr, RESOLUTIONS))}, got {resolution!r}"
        )
    return require_dir(os.path.join(root, resolution), "koniq10k image folder")


def _official_sets(root: str, on_bad_row: str, skipped: list[str]) -> dict[str, str] | None:
    """image name -> split, or None when the split file is absent (the split is then left to a policy)."""
    path = next(
        (p for p in (os.path.join(root, SETS_FILE), os.path.join(root, "metadata", SETS_FILE)) if os.path.isfile(p)),
        None,
    )
    if path is None:
        return None
    name = os.path.relpath(path, root)
    header, records = read_csv(path, name)
    require_columns(name, header, ["image_name", "set"])
    policy = RowPolicy(name, on_bad_row, skipped)
    sets: dict[str, str] = {}
    for row_no, fields in records:
        with policy.row(row_no):
            row = row_dict(header, fields)
            value = row["set"]
            if value not in SET_NAMES:
                raise BadRow(f"column 'set': unknown split {value!r} (expected {', '.join(SET_NAMES)})")
            sets[row["image_name"]] = SET_NAMES[value]
    return sets


@DATASETS.register("koniq10k")
def load_koniq10k(root: str, *, on_bad_row: str = "error", resolution: str | None = None) -> LoadedDataset:
    """KonIQ-10k; ``resolution`` picks ``1024x768`` or ``512x384`` (default: whichever exists, 1024x768 first)."""
    root = check_root(root, "koniq10k")
    scores = require_file(os.path.join(root, SCORES_FILE), "koniq10k label file")
    images = _image_folder(root, resolution)
    skipped: list[str] = []
    sets = _official_sets(root, on_bad_row, skipped)

    header, records = read_csv(scores, SCORES_FILE)
    require_columns(SCORES_FILE, header, ["image_name", "MOS", "SD"])
    policy = RowPolicy(SCORES_FILE, on_bad_row, skipped)
    seen = Dedup()
    samples: list[IQASample] = []
    for row_no, fields in records:
        with policy.row(row_no):
            row = row_dict(header, fields)
            name = row["image_name"]
            path = image_path(images, name)
            mos = in_range(number(row["MOS"], "MOS"), *MOS_RANGE, "MOS")
            sd = number(row["SD"], "SD")
            split = None
            if sets is not None:
                if name not in sets:
                    raise BadRow(f"image {name!r} has no entry in {SETS_FILE}")
                split = sets[name]
            seen.check(path, row_no)
            samples.append(make_sample(path, mos, MOS_RANGE, std_raw=sd, split=split))
    return nonempty(
        LoadedDataset(
            name="koniq10k",
            samples=samples,
            mos_range=MOS_RANGE,
            higher_is_better=True,
            skipped=skipped,
            has_official_split=sets is not None,
        )
    )
