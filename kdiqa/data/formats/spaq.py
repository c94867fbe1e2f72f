"""SPAQ as released: ``MOS and Image attribute scores.xlsx`` and the ``TestImage/`` folder.

The release keeps its spreadsheets under ``Annotations/``; a copy in the dataset folder itself is
accepted too. Only MOS is read: the attribute columns (brightness, colourfulness, ...) follow it.
"""

from __future__ import annotations

import os
import zipfile

from kdiqa.data.formats._rows import (
    Dedup,
    RowPolicy,
    check_root,
    find_first,
    image_path,
    in_range,
    make_sample,
    nonempty,
    number,
    require_columns,
    require_dir,
)
from kdiqa.data.sample import IQASample, LoadedDataset
from kdiqa.errors import DataError
from kdiqa.registry import DATASETS

LABEL_FILE = "MOS and Image attribute scores.xlsx"
IMAGE_DIR = "TestImage"
MOS_RANGE = (0.0, 100.0)  # continuous slider ratings, 0-100
NAME_COLUMN = "Image name"
MOS_COLUMN = "MOS"


def _read_sheet(path: str, label_name: str) -> tuple[list[str], list[tuple[int, list[object]]]]:
    """Header and ``(sheet row, values)`` of the first sheet; fully empty rows are dropped."""
    import openpyxl  # imported here: only SPAQ needs it, and it is slow to import

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise DataError(f"{label_name}: not a readable .xlsx workbook ({exc})") from None
    try:
        sheet = book.worksheets[0]
        rows = [
            (index, list(values))
            for index, values in enumerate(sheet.iter_rows(values_only=True), start=1)
            if any(v is not None and str(v).strip() for v in values)
        ]
    finally:
        book.close()
    if not rows or rows[0][0] != 1:
        raise DataError(f"{label_name}: expected a header row on row 1")
    header = ["" if v is None else str(v).strip() for v in rows[0][1]]
    return header, rows[1:]


@DATASETS.register("spaq")
def load_spaq(root: str, *, on_bad_row: str = "error") -> LoadedDataset:
    """SPAQ (11,125 smartphone photographs); no official split."""
    root = check_root(root, "spaq")
    label = find_first(
        [os.path.join(root, "Annotations", LABEL_FILE), os.path.join(root, LABEL_FILE)], "spaq label file"
    )
    label_name = os.path.relpath(label, root)
    images = require_dir(os.path.join(root, IMAGE_DIR), "spaq image folder")
    header, records = _read_sheet(label, label_name)
    require_columns(label_name, header, [NAME_COLUMN, MOS_COLUMN])
    name_at, mos_at = header.index(NAME_COLUMN), header.index(MOS_COLUMN)

    skipped: list[str] = []
    policy = RowPolicy(label_name, on_bad_row, skipped)
    seen = Dedup()
    samples: list[IQASample] = []
    for row_no, values in records:
        with policy.row(row_no):
            values = values + [None] * (len(header) - len(values))
            name = "" if values[name_at] is None else str(values[name_at])
            path = image_path(images, name)
            mos = in_range(number(values[mos_at], MOS_COLUMN), *MOS_RANGE, MOS_COLUMN)
            seen.check(path, row_no)
            samples.append(make_sample(path, mos, MOS_RANGE))
    return nonempty(LoadedDataset(name="spaq", samples=samples, mos_range=MOS_RANGE, skipped=skipped))
