"""KADID-10k as released: ``dmos.csv`` (dist_img, ref_img, dmos, var) and the ``images/`` folder.

Despite its name the ``dmos`` column is the mean of degradation-category ratings on 1 (very
annoying) .. 5 (imperceptible) against the reference, so higher is better and nothing is flipped.
Each of the 81 reference photographs appears in 125 distorted versions: ``group`` is the reference,
so split policies keep one photograph's versions together.
"""

from __future__ import annotations

import math
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
from kdiqa.registry import DATASETS

LABEL_FILE = "dmos.csv"
IMAGE_DIR = "images"
MOS_RANGE = (1.0, 5.0)
HIGHER_IS_BETTER = True  # 5 = imperceptible degradation


@DATASETS.register("kadid10k")
def load_kadid10k(root: str, *, on_bad_row: str = "error") -> LoadedDataset:
    """KADID-10k (10,125 distorted images of 81 references); no official split, grouped by reference."""
    root = check_root(root, "kadid10k")
    label = require_file(os.path.join(root, LABEL_FILE), "kadid10k label file")
    images = require_dir(os.path.join(root, IMAGE_DIR), "kadid10k image folder")
    header, records = read_csv(label, LABEL_FILE)
    require_columns(LABEL_FILE, header, ["dist_img", "ref_img", "dmos", "var"])

    skipped: list[str] = []
    policy = RowPolicy(LABEL_FILE, on_bad_row, skipped)
    seen = Dedup()
    samples: list[IQASample] = []
    for row_no, fields in records:
        with policy.row(row_no):
            row = row_dict(header, fields)
            path = image_path(images, row["dist_img"])
            dmos = in_range(number(row["dmos"], "dmos"), *MOS_RANGE, "dmos")
            var = number(row["var"], "var")  # the variance of the ratings
            if var < 0:
                raise BadRow(f"column 'var': {var:g} is negative")
            reference = row["ref_img"]
            if not reference:
                raise BadRow("column 'ref_img' is empty")
            seen.check(path, row_no)
            samples.append(
                make_sample(path, dmos, MOS_RANGE, HIGHER_IS_BETTER, std_raw=math.sqrt(var), group=reference)
            )
    return nonempty(
        LoadedDataset(
            name="kadid10k", samples=samples, mos_range=MOS_RANGE, higher_is_better=HIGHER_IS_BETTER, skipped=skipped
        )
    )
