"""LIVE In the Wild Image Quality Challenge as released: MATLAB files under ``Data/``, images in ``Images/``.

``AllImages_release.mat`` holds a cell array of file names and ``AllMOS_release.mat`` a row of MOS
in the same order. Its first seven entries are the examples shown to raters before the study
(stored in ``Images/trainingImages/``); the field leaves them out, so this loader does by default.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kdiqa.data.formats._rows import (
    BadRow,
    Dedup,
    RowPolicy,
    check_root,
    in_range,
    make_sample,
    nonempty,
    number,
    require_dir,
    require_file,
)
from kdiqa.data.sample import IQASample, LoadedDataset
from kdiqa.errors import DataError
from kdiqa.registry import DATASETS

NAMES_FILE = os.path.join("Data", "AllImages_release.mat")
MOS_FILE = os.path.join("Data", "AllMOS_release.mat")
STD_FILE = os.path.join("Data", "AllStdDev_release.mat")
MOS_RANGE = (0.0, 100.0)  # continuous slider ratings, 0-100
TRAINING_EXAMPLES = 7  # the first entries: the raters' practice images, not part of the study
TRAINING_DIR = "trainingImages"


def _load_var(root: str, relpath: str, var: str) -> Any:
    from scipy.io import loadmat  # imported here: only this loader needs scipy.io

    path = os.path.join(root, relpath)
    try:
        content = loadmat(path)
    except Exception as exc:  # scipy raises several unrelated types for a corrupt file
        raise DataError(f"{relpath}: not a readable MATLAB file ({exc})") from None
    if var not in content:
        found = ", ".join(repr(k) for k in content if not k.startswith("__")) or "none"
        raise DataError(f"{relpath}: variable {var!r} missing (found: {found})")
    return content[var]


def _names(cells: Any) -> list[str | None]:
    """File names from a MATLAB cell array (loadmat gives an object array of 1-element char arrays)."""
    names: list[str | None] = []
    for cell in np.asarray(cells, dtype=object).ravel(order="F"):
        value = cell
        while isinstance(value, np.ndarray):
            value = value.ravel()[0] if value.size else None
        names.append(str(value) if isinstance(value, str) else None)
    return names


def _values(array: Any, relpath: str, count: int) -> list[Any]:
    values = np.asarray(array).ravel(order="F").tolist()
    if len(values) != count:
        raise DataError(f"{relpath}: has {len(values)} values but {NAMES_FILE} lists {count} images")
    return values


@DATASETS.register("livec")
def load_livec(root: str, *, on_bad_row: str = "error", include_training_examples: bool = False) -> LoadedDataset:
    """LIVE Challenge (1,162 photographs, or 1,169 with the 7 training examples); no official split."""
    root = check_root(root, "livec")
    require_file(os.path.join(root, NAMES_FILE), "livec image list")
    require_file(os.path.join(root, MOS_FILE), "livec MOS file")
    images = require_dir(os.path.join(root, "Images"), "livec image folder")
    names = _names(_load_var(root, NAMES_FILE, "AllImages_release"))
    moses = _values(_load_var(root, MOS_FILE, "AllMOS_release"), MOS_FILE, len(names))
    stds: list[Any] = [None] * len(names)
    if os.path.isfile(os.path.join(root, STD_FILE)):
        stds = _values(_load_var(root, STD_FILE, "AllStdDev_release"), STD_FILE, len(names))

    skipped: list[str] = []
    policy = RowPolicy(NAMES_FILE, on_bad_row, skipped)
    seen = Dedup()
    samples: list[IQASample] = []
    first = 0 if include_training_examples else TRAINING_EXAMPLES
    for index in range(first, len(names)):
        row_no = index + 1  # MATLAB's 1-based index
        with policy.row(row_no):
            name = names[index]
            if not name:
                raise BadRow("entry is not a file name")
            path = _image(images, name)
            mos = in_range(number(moses[index], "AllMOS_release"), *MOS_RANGE, "AllMOS_release")
            std = None if stds[index] is None else number(stds[index], "AllStdDev_release")
            seen.check(path, row_no)
            samples.append(make_sample(path, mos, MOS_RANGE, std_raw=std))
    return nonempty(LoadedDataset(name="livec", samples=samples, mos_range=MOS_RANGE, skipped=skipped))


def _image(images: str, name: str) -> str:
    """The release keeps the training examples in a subfolder; copies flattened into Images/ work too."""
    for folder in (images, os.path.join(images, TRAINING_DIR)):
        path = os.path.abspath(os.path.join(folder, name))
        if os.path.isfile(path):
            return path
    raise BadRow(f"image {name!r} not found in {images}")
