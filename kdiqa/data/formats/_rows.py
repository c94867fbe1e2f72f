"""Shared plumbing for the format loaders: bad-row policy, file checks, number parsing, scaling.

Every loader reports a bad row the same way — ``<label file> row <n>: <reason>`` — so a user can
open the file at that line and fix it. Row numbers are what a spreadsheet or editor shows: line
numbers for text files (the header is row 1), sheet rows for .xlsx, 1-based indices for .mat arrays.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from kdiqa.data.sample import IQASample, LoadedDataset
from kdiqa.errors import ConfigError, DataError


class BadRow(Exception):
    """Raised inside a loader's per-row code; :meth:`RowPolicy.row` turns it into an error or a skip."""


class RowPolicy:
    """Applies ``on_bad_row`` (``"error"`` or ``"skip"``, checked in the recipe as ``data.on_bad_row``)
    to one label file and remembers what it skipped.

    Keeping the policy in one object means no loader can forget to count a skipped row.
    """

    def __init__(self, label_name: str, on_bad_row: str, skipped: list[str] | None = None):
        self.label_name = label_name
        self.on_bad_row = on_bad_row
        self.skipped: list[str] = [] if skipped is None else skipped

    def reject(self, row: int | str, reason: str) -> None:
        message = f"{self.label_name} row {row}: {reason}"
        if self.on_bad_row == "error":
            raise DataError(message)
        self.skipped.append(message)

    @contextmanager
    def row(self, row: int | str) -> Iterator[None]:
        """Run one row's code; a :class:`BadRow` raised inside is reported (or skipped) with its number."""
        try:
            yield
        except BadRow as exc:
            self.reject(row, str(exc))


def check_range(value: object, dataset: str, option: str) -> tuple[float, float]:
    """A recipe's ``[low, high]`` scale, as two floats with low < high."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"{dataset}: {option} must be [low, high], got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"{dataset}: {option} must be finite with low < high, got {value!r}")
    return lo, hi


def check_root(root: str, dataset: str) -> str:
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ConfigError(f"{dataset}: 'root' must be a folder path, got {root!r}")
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"{dataset}: dataset folder not found: {root}")
    return root


def require_file(path: str, what: str) -> str:
    """A missing label file is never a bad row: the whole dataset is unusable, so say where it belongs."""
    if not os.path.isfile(path):
        raise DataError(f"{what} not found: expected {path}")
    return path


def find_first(candidates: Sequence[str], what: str, isdir: bool = False) -> str:
    """The first existing path among ``candidates`` (release layouts vary); error lists them all."""
    check = os.path.isdir if isdir else os.path.isfile
    for path in candidates:
        if check(path):
            return path
    expected = " or ".join(candidates)
    raise DataError(f"{what} not found: expected {expected}")


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DataError(f"{what} not found: expected {path}")
    return path


def require_columns(label_name: str, header: Sequence[str], required: Sequence[str]) -> None:
    """Missing columns break every row, so they are always an error, whatever ``on_bad_row`` says."""
    missing = [c for c in required if c not in header]
    if missing:
        found = ", ".join(repr(h) for h in header) or "none"
        raise DataError(
            f"{label_name}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)} (found: {found})"
        )


def read_csv(path: str, label_name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(row number, fields)`` pairs, blank lines dropped; a file without data rows is an error.

    utf-8-sig swallows the BOM that spreadsheet exports often add. Row numbers are the line on
    which each record starts, so quoted multi-line fields do not shift them.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            records: list[tuple[int, list[str]]] = []
            line = 0
            for fields in reader:
                start, line = line + 1, reader.line_num
                if fields and any(f.strip() for f in fields):
                    records.append((start, fields))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{label_name}: not a readable CSV file ({exc})") from None
    if not records or records[0][0] != 1:
        raise DataError(f"{label_name}: expected a header row on line 1")
    if len(records) == 1:  # named by its full path: "labels.csv" alone does not say which one
        raise DataError(f"{os.path.abspath(path)}: has a header row but no data rows")
    header = [h.strip() for h in records[0][1]]
    return header, records[1:]


def row_dict(header: Sequence[str], fields: Sequence[str]) -> dict[str, str]:
    """Fields by column name; a ragged row is a :class:`BadRow` (its values would land in wrong columns)."""
    if len(fields) != len(header):
        raise BadRow(f"has {len(fields)} fields, the header has {len(header)}")
    return {h: f.strip() for h, f in zip(header, fields, strict=True)}


def number(value: object, column: str) -> float:
    """A finite float, or a :class:`BadRow` naming the column; empty cells and NaN are both bad."""
    if isinstance(value, bool):
        raise BadRow(f"column {column!r}: {value!r} is not a number")
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        shown = "empty" if value is None or (isinstance(value, str) and not value.strip()) else repr(value)
        raise BadRow(f"column {column!r}: {shown} is not a number") from None
    if not math.isfinite(result):
        raise BadRow(f"column {column!r}: {value!r} is not a finite number")
    return result


def in_range(value: float, lo: float, hi: float, column: str, scale: str = "the published range") -> float:
    """Out-of-range scores usually mean the wrong column or scale; catching them here beats bad training."""
    if not lo <= value <= hi:
        raise BadRow(f"column {column!r}: {value:g} is outside {scale} [{lo:g}, {hi:g}]")
    return value


def image_path(folder: str, name: str) -> str:
    """Absolute path of an existing image; only existence is checked (images are decoded later)."""
    name = str(name).strip()
    if not name:
        raise BadRow("empty image name")
    path = os.path.abspath(os.path.join(folder, name))
    if not os.path.isfile(path):
        raise BadRow(f"image {name!r} not found in {folder}")
    return path


class Dedup:
    """Refuses an image listed twice: a duplicate would count twice in metrics and could leak across splits."""

    def __init__(self) -> None:
        self._rows: dict[str, int | str] = {}

    def check(self, key: str, row: int | str) -> None:
        first = self._rows.get(key)
        if first is not None:
            raise BadRow(f"image {os.path.basename(key)!r} is already listed in row {first}")
        self._rows[key] = row


def nonempty(dataset: LoadedDataset) -> LoadedDataset:
    """A dataset with no usable row would only fail later, far from the cause: stop here instead."""
    if not dataset.samples:
        raise no_samples(dataset.name, dataset.skipped)
    return dataset


def no_samples(name: str, skipped: Sequence[str]) -> DataError:
    detail = f"; all {len(skipped)} rows were skipped, the first: {skipped[0]}" if skipped else ""
    return DataError(f"{name}: no usable samples{detail}")


def normalise(raw: float, lo: float, hi: float, higher_is_better: bool = True) -> float:
    scaled = (raw - lo) / (hi - lo)
    return scaled if higher_is_better else 1.0 - scaled


def make_sample(
    path: str,
    raw: float,
    mos_range: tuple[float, float],
    higher_is_better: bool = True,
    std_raw: float | None = None,
    **extra: object,
) -> IQASample:
    """Normalise ``raw`` (and ``std_raw`` with the same scale factor) into an :class:`IQASample`."""
    lo, hi = mos_range
    std = None if std_raw is None else std_raw / (hi - lo)
    return IQASample(
        path=path,
        mos=normalise(raw, lo, hi, higher_is_better),
        mos_raw=raw,
        std=std,
        **extra,  # type: ignore[arg-type]
    )
