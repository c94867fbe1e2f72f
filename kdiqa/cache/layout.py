"""What a cache file holds, under which names, and where its sibling files live.

One HDF5 file per cache (or per shard), one row per (image, view):

``index`` (int64), ``view_id`` (int32), ``params`` (float64 × 6, :meth:`ViewParams.to_array`),
``mos`` (float32), ``done`` (uint8 progress mask), ``teacher/score`` (float32), ``teacher/dist``
(float32 × K, when the teacher has one), and ``features/<name>`` (float16, float32 or uint8, one chunk
per row) for every feature map the run asked for; with ``dtype`` int8, ``quant/<name>`` (float32,
views × 2 × channels) beside each holds the scale and zero point its uint8 codes are read back with
(:mod:`kdiqa.cache.quantize`).

Views of unlabelled (pool) images, ``data.unlabelled``, have ``mos`` NaN: that is how a view says it
has no label. An unlabelled image that does not decode is skipped, not fatal: its rows hold NaN in
``teacher/score`` (and in every other teacher output) and readers leave them out. A teacher's own
non-finite output is refused when written, so a NaN score means nothing else.

Score and distribution stay float32 whatever ``dtype`` says: they are 4 bytes a view, and a ranking
target should not lose its third digit to fp16. ``dtype`` applies to the feature maps, which are
where the bytes are.

File names: the cache ``cache.h5`` is built in ``cache.h5.partial`` and renamed when complete, so a
file at the cache path is always a finished one; shard ``i`` of ``n`` is
``cache.h5.shard-i-of-n.h5`` (with its own ``.partial`` while it is being written).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

FORMAT = "kdiqa-feature-cache"
FORMAT_VERSION = 1

PARTIAL_SUFFIX = ".partial"

# datasets every cache file has (rows along axis 0)
INDEX = "index"
VIEW_ID = "view_id"
PARAMS = "params"
MOS = "mos"
DONE = "done"
SCORE = "teacher/score"
DIST = "teacher/dist"
FEATURES = "features"
QUANT = "quant"  # scales and zero points of int8 feature maps

# names a teacher feature may not take: the reader returns features beside score/dist in one dict
RESERVED_FEATURE_NAMES = ("score", "dist")

# root attributes
ATTR_FORMAT = "format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_VERSION = "kdiqa_version"
ATTR_COMPLETE = "complete"  # int8, 0 until the last row is written; overwritten in place (same size)
ATTR_FINGERPRINTS = "fingerprints"  # JSON {name: hex digest}
ATTR_META = "meta"  # JSON: views per image, seed, row range, shard, view policy, targets, ...

_SHARD_RE = re.compile(r"\.shard-(\d+)-of-(\d+)\.h5$")


def feature_dataset(name: str) -> str:
    """HDF5 path of a feature; names such as ``unet.up_blocks.2`` are kept, a ``/`` is escaped."""
    return f"{FEATURES}/{quote(name, safe='.-_+:@ ')}"


def quant_dataset(name: str) -> str:
    """HDF5 path of an int8 feature's scales and zero points (``quant/<name>``, escaped as features are)."""
    return f"{QUANT}/{feature_dataset(name).split('/', 1)[1]}"


def feature_name(dataset_name: str) -> str:
    return unquote(dataset_name.rsplit("/", 1)[-1])


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def shard_path(path: str | Path, index: int, count: int) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}.shard-{index}-of-{count}.h5")


def parse_shard_name(name: str) -> tuple[int, int] | None:
    match = _SHARD_RE.search(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def loads_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    return json.loads(str(value))
