"""AVA as released: ``AVA.txt``, one image per line, space separated:
index, image id, the vote counts for scores 1..10, semantic tag 1, semantic tag 2, challenge id.

The label is the whole vote distribution (kept in ``dist``); ``mos_raw`` is its mean on the 1..10
scale and ``std`` its spread, both derived from the counts. Images are ``<image id>.jpg``.
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
    make_sample,
    nonempty,
    require_dir,
    require_file,
)
from kdiqa.data.sample import IQASample, LoadedDataset
from kdiqa.errors import DataError
from kdiqa.registry import DATASETS

LABEL_FILE = "AVA.txt"
MOS_RANGE = (1.0, 10.0)  # votes are integer scores 1..10
N_SCORES = 10
N_FIELDS = 2 + N_SCORES + 3


def _counts(fields: list[str]) -> list[int]:
    counts = []
    for score, text in enumerate(fields[2 : 2 + N_SCORES], start=1):
        try:
            count = int(text)
        except ValueError:
            raise BadRow(f"votes for score {score}: {text!r} is not a whole number") from None
        if count < 0:
            raise BadRow(f"votes for score {score}: {count} is negative")
        counts.append(count)
    if sum(counts) == 0:
        raise BadRow("image has no votes")
    return counts


@DATASETS.register("ava")
def load_ava(root: str, *, on_bad_row: str = "error", image_dir: str = "images") -> LoadedDataset:
    """AVA (about 255k photographs from DPChallenge); ``theme`` is the challenge id; no official split here."""
    root = check_root(root, "ava")
    label = require_file(os.path.join(root, LABEL_FILE), "ava label file")
    images = require_dir(os.path.join(root, image_dir), "ava image folder")

    skipped: list[str] = []
    policy = RowPolicy(LABEL_FILE, on_bad_row, skipped)
    seen = Dedup()
    samples: list[IQASample] = []
    try:
        with open(label, encoding="utf-8") as handle:
            lines = handle.readlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{LABEL_FILE}: not a text file ({exc})") from None
    for row_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        with policy.row(row_no):
            if len(fields) != N_FIELDS:
                raise BadRow(
                    f"has {len(fields)} fields, expected {N_FIELDS} (index, id, 10 vote counts, 2 tags, challenge)"
                )
            counts = _counts(fields)
            path = image_path(images, f"{fields[1]}.jpg")
            total = sum(counts)
            dist = tuple(c / total for c in counts)
            mean = sum(score * p for score, p in enumerate(dist, start=1))
            spread = math.sqrt(sum(p * (score - mean) ** 2 for score, p in enumerate(dist, start=1)))
            seen.check(path, row_no)
            samples.append(make_sample(path, mean, MOS_RANGE, std_raw=spread, dist=dist, theme=fields[-1]))
    return nonempty(LoadedDataset(name="ava", samples=samples, mos_range=MOS_RANGE, skipped=skipped))
