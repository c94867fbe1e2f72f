"""``cache.dtype: int8``: feature maps stored as one byte per value, a scale and a zero point beside them.

Why: a teacher's feature maps are the cache's bytes (F_quality at 512² is 64 KiB per view in fp16; a
million views is 64 GB); one byte per value halves what float16 costs, and a student distilled from
the dequantized maps matches one distilled from float16 maps (``benchmarks/cache_compact.py``).

How: affine quantization of each (view, channel) plane from its own min and max, so a channel of small
values keeps its resolution next to a channel of large ones and no calibration pass is needed. A view's
map of shape ``(C, ...)`` has C planes (a map of one axis is a single plane). For a plane with minimum
``lo`` and maximum ``hi``::

    scale = (hi - lo) / 255   (rounded up to float32, so that 255 steps reach hi)
    code  = round((x - lo) / scale)                      uint8, 0 … 255
    x̂     = lo + code * scale                            what the reader serves, float32

so every value comes back within **half a step**, ``|x - x̂| <= (hi - lo) / 255 / 2`` (plus float32
rounding of that sum, below 1e-7 of the plane's magnitude), and a plane's min maps to itself exactly. A
constant plane has scale 0 and comes back exactly. ``lo`` is the zero point: the value code 0 stands for.

Stored: ``features/<name>`` (uint8, the codes, one chunk per view like every feature) and
``quant/<name>`` (float32, ``(views, 2, C)``: row 0 the scales, row 1 the zero points). A view without
targets (an unreadable pool image) has codes 0 and NaN scale and zero point, so it dequantizes to NaN
as its float maps would.
"""
from __future__ import annotations

import numpy as np

LEVELS = 255  # uint8 codes 0 … 255
CODE_DTYPE = np.uint8


def channels(shape: tuple[int, ...]) -> int:
    """Planes per view of a map of per-view ``shape``: its first axis, or one for a map of one axis."""
    return int(shape[0]) if len(shape) >= 2 else 1


def quantize(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``maps`` (views, *shape), float → (codes uint8 of the same shape, params float32 (views, 2, C)).

    Planes holding a non-finite value (only the NaN rows of unreadable pool images reach here; other
    non-finite outputs are refused before) get codes 0 and NaN parameters.
    """
    n, shape = maps.shape[0], maps.shape[1:]
    planes = np.asarray(maps, dtype=np.float32).reshape(n, channels(shape), -1)
    finite = np.isfinite(planes).all(axis=2)
    with np.errstate(invalid="ignore"):
        lo = planes.min(axis=2)
        hi = planes.max(axis=2)
    lo = np.where(finite, lo, 0).astype(np.float32)
    hi = np.where(finite, hi, 0).astype(np.float32)
    scale = _step(lo, hi)
    safe = np.where(scale > 0, scale, 1).astype(np.float64)[..., None]
    with np.errstate(invalid="ignore"):
        codes = np.rint((planes.astype(np.float64) - lo[..., None]) / safe)
    codes = np.where(finite[..., None], np.clip(codes, 0, LEVELS), 0).astype(CODE_DTYPE)
    params = np.stack([np.where(finite, scale, np.nan), np.where(finite, lo, np.nan)], axis=1).astype(np.float32)
    return codes.reshape(maps.shape), params


def dequantize(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    """One view's codes (*shape) and params (2, C) → its map as float32 (the reader's side)."""
    planes = codes.reshape(channels(codes.shape), -1).astype(np.float32)
    scale, zero = params[0].astype(np.float32), params[1].astype(np.float32)
    return (zero[:, None] + planes * scale[:, None]).reshape(codes.shape)


def _step(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(hi - lo) / 255 as float32, rounded up where float32 rounding fell short (so lo + 255·step >= hi)."""
    exact = (hi.astype(np.float64) - lo.astype(np.float64)) / LEVELS
    step = exact.astype(np.float32)
    short = step.astype(np.float64) < exact
    step[short] = np.nextafter(step[short], np.float32(np.inf))
    return step
