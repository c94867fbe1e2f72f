"""AGIQA-3K as released: ``data.csv`` (name, prompt, adj1, adj2, style, mos_quality, std_quality,
mos_align, std_align) and 2,982 generated images.

The label file is published in the project's repository and the images in a separate archive,
so where the images sit varies: by default the loader takes the first of ``AGIQA-3K/``,
``AGIQA-3k/``, ``images/`` that exists, else the dataset folder itself; ``image_dir`` overrides.
"""

from __future__ import annotations

import os

from kdiqa.data.formats._rows import (
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
from kdiqa.errors import ConfigError
from kdiqa.registry import DATASETS

LABEL_FILE = "data.csv"
MOS_RANGE = (0.0, 5.0)  # ratings on a continuous 0-5 scale, for perceptual quality and for alignment
TARGETS = {"quality": ("mos_quality", "std_quality"), "align": ("mos_align", "std_align")}
IMAGE_DIR_CANDIDATES = ("AGIQA-3K", "AGIQA-3k", "images")


def _image_folder(root: str, image_dir: str | None) -> str:
    if image_dir is not None:
        return require_dir(os.path.join(root, image_dir), "agiqa3k image folder")
    for candidate in IMAGE_DIR_CANDIDATES:
        if os.path.isdir(os.path.join(root, candidate)):
            return os.path.join(root, candidate)
    return root


@DATASETS.register("agiqa3k")
def load_agiqa3k(
    root: str, *, on_bad_row: str = "error", target: str = "quality", image_dir: str | None = None
) -> LoadedDataset:
    """AGIQA-3K; ``target`` chooses perceptual ``quality`` (default) or text-image ``align``ment."""
    if target not in TARGETS:
        raise ConfigError(f"agiqa3k: target must be one of {', '.join(map(repr, TARGETS))}, got {target!r}")
    mos_column, std_column = TARGETS[target]
    root = check_root(root, "agiqa3k")
    label = require_file(os.path.join(root, LABEL_FILE), "agiqa3k label file")
    images = _image_folder(root, image_dir)
    header, records = read_csv(label, LABEL_FILE)
    require_columns(LABEL_FILE, header, ["name", mos_column, std_column])

    skipped: list[str] = []
    policy = RowPolicy(LABEL_FILE, on_bad_row, skipped)
    seen = Dedup()
    samples: list[IQASample] = []
    for row_no, fields in records:
        with policy.row(row_no):
            row = row_dict(header, fields)
            path = image_path(images, row["name"])
            mos = in_range(number(row[mos_column], mos_column), *MOS_RANGE, mos_column)
            std = number(row[std_column], std_column)
            seen.check(path, row_no)
            samples.append(make_sample(path, mos, MOS_RANGE, std_raw=std))
    return nonempty(LoadedDataset(name="agiqa3k", samples=samples, mos_range=MOS_RANGE, skipped=skipped))
