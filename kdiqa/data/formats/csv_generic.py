"""A generic labelled-image CSV: the way in for any dataset without a loader of its own, and the
format of the embedded mini dataset.

Header required; columns ``path`` and ``mos`` required, ``std``, ``split`` and ``group`` optional.
Paths are relative to the CSV's folder (or absolute). ``mos_range`` states the scale; without it
the data's own min and max are used, with a warning, because then scores from two files normalise
differently.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from kdiqa.data.formats._rows import (
    BadRow,
    Dedup,
    RowPolicy,
    check_range,
    check_root,
    in_range,
    make_sample,
    no_samples,
    nonempty,
    number,
    read_csv,
    require_columns,
    require_file,
    row_dict,
)
from kdiqa.data.sample import SPLITS, IQASample, LoadedDataset
from kdiqa.errors import ConfigError, DataError
from kdiqa.registry import DATASETS

DEFAULT_FILE = "labels.csv"
REQUIRED = ("path", "mos")


def _image(folder: str, value: str) -> str:
    if not value:
        raise BadRow("column 'path' is empty")
    path = os.path.abspath(os.path.join(folder, value))  # an absolute value wins in os.path.join
    if not os.path.isfile(path):
        raise BadRow(f"image {value!r} not found" + ("" if os.path.isabs(value) else f" in {folder}"))
    return path


@DATASETS.register("csv")
def load_csv(
    root: str,
    *,
    on_bad_row: str = "error",
    file: str = DEFAULT_FILE,
    mos_range: Sequence[float] | None = None,
    higher_is_better: bool = True,
) -> LoadedDataset:
    """Any CSV with ``path,mos[,std,split,group]``; ``file`` is relative to ``root`` or absolute."""
    if not isinstance(higher_is_better, bool):
        raise ConfigError(f"csv: higher_is_better must be true or false, got {higher_is_better!r}")
    scale = None if mos_range is None else check_range(mos_range, "csv", "mos_range")
    root = check_root(root, "csv")
    label = require_file(os.path.join(root, file), "csv label file")
    folder = os.path.dirname(label)
    label_name = os.path.relpath(label, root) if not os.path.isabs(file) else label
    header, records = read_csv(label, label_name)
    require_columns(label_name, header, REQUIRED)

    skipped: list[str] = []
    policy = RowPolicy(label_name, on_bad_row, skipped)
    seen = Dedup()
    rows: list[tuple[int, str, float, float | None, str | None, str | None]] = []
    for row_no, fields in records:
        with policy.row(row_no):
            row = row_dict(header, fields)
            path = _image(folder, row["path"])
            mos = number(row["mos"], "mos")
            if scale is not None:
                in_range(mos, *scale, "mos", "mos_range")
            std = number(row["std"], "std") if row.get("std") else None
            split = None
            if "split" in row:
                split = row["split"]
                if split not in SPLITS:
                    raise BadRow(f"column 'split': unknown split {split!r} (expected {', '.join(SPLITS)})")
            group = row.get("group") or None
            seen.check(path, row_no)
            rows.append((row_no, path, mos, std, split, group))

    if not rows:
        raise no_samples("csv", skipped)
    if scale is None:
        scale = _inferred_range(label_name, [r[2] for r in rows])
    samples: list[IQASample] = [
        make_sample(path, mos, scale, higher_is_better, std_raw=std, split=split, group=group)
        for _, path, mos, std, split, group in rows
    ]
    return nonempty(
        LoadedDataset(
            name="csv",
            samples=samples,
            mos_range=scale,
            higher_is_better=higher_is_better,
            skipped=skipped,
            has_official_split="split" in header and bool(samples),
        )
    )


def _inferred_range(label_name: str, values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if lo == hi:
        raise DataError(f"{label_name}: every MOS is {lo:g}, so no MOS range can be inferred; set mos_range")
    warnings.warn(
        f"{label_name}: no mos_range given; normalising with the data's own range [{lo:g}, {hi:g}] "
        "(set mos_range to the published scale so that splits and files agree)",
        stacklevel=2,
    )
    return lo, hi
