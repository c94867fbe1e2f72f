"""How one mini sample is synthesised: a random crop of a photograph, then one synthetic distortion.

1. Crop: a photograph of the split is chosen uniformly; a square of side ``size / u``, ``u ~ U(0.5,
   1)`` (capped at the photograph's short side), at a uniform random position, is resized to
   ``size`` px (bicubic, antialiased) and mirrored left-right with probability 1/2. Flat crops —
   standard deviation of the grey level < 6 or mean gradient magnitude < 3 (0–255 scale) — are
   redrawn: blur or pixelation of a patch of sky changes nothing the label can see, so such samples
   would only teach noise.
2. Distortion: with probability 0.05 none; otherwise one of :data:`kdiqa.data.distortions.DISTORTIONS`
   drawn uniformly — Gaussian blur (σ 0.5–5 px), additive Gaussian noise (σ 3–60), JPEG (quality
   40–2), contrast loss (factor 0.9–0.15 around the mean grey), pixelation (blocks of 1.5–10 px),
   desaturation (25–100 %, drawn only for crops that have colour), brightness (gamma e^±0.15 to
   e^±1.2) — at ``level ~ U(0, 1)``, mapped log-uniformly onto that parameter range.

The label is computed afterwards, in batches (:mod:`kdiqa.data.mini.label`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from kdiqa.data.distortions import DISTORTIONS, apply_distortion
from kdiqa.errors import DataError

CLEAN_FRACTION = 0.05
MIN_STD = 6.0
MIN_GRADIENT = 3.0
MAX_CROP_TRIES = 100


def is_flat(img: np.ndarray, min_std: float = MIN_STD, min_gradient: float = MIN_GRADIENT) -> bool:
    """True if the crop has too little texture for blur or pixelation to change its label."""
    g = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if float(g.std()) < min_std:
        return True
    gx = np.diff(g, axis=1)[:-1, :]
    gy = np.diff(g, axis=0)[:, :-1]
    return float(np.sqrt(gx * gx + gy * gy).mean()) < min_gradient


def has_colour(img: np.ndarray) -> bool:
    i = img.astype(np.int16)
    return bool(np.abs(i[..., 0] - i[..., 1]).mean() + np.abs(i[..., 1] - i[..., 2]).mean() > 2.0)


def distort(reference: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str, float]:
    """``(distorted, distortion, level)``: the reference itself (``"none"``, 0) with probability
    ``CLEAN_FRACTION``, else one distortion drawn uniformly, at a uniform level."""
    if rng.random() < CLEAN_FRACTION:
        return reference, "none", 0.0
    # Desaturating a grey crop changes nothing: draw saturation only where there is colour.
    kinds = list(DISTORTIONS) if has_colour(reference) else [k for k in DISTORTIONS if k != "saturation"]
    kind = kinds[int(rng.integers(len(kinds)))]
    level = float(rng.random())
    return apply_distortion(reference, kind, level, rng), kind, level


@dataclass(frozen=True)
class SampleSpec:
    """How one sample was made (written to details.csv)."""

    photo: str
    x: int
    y: int
    side: int
    flip: bool
    distortion: str  # "none" for clean samples
    level: float
    parameter: float


def random_crop(
    photo: Image.Image, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int, bool]]:
    """A square crop at a random position and scale, resized to ``size`` and maybe mirrored."""
    w, h = photo.size
    side = min(int(round(size / rng.uniform(0.5, 1.0))), h, w)
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    flip = bool(rng.random() < 0.5)
    box = (x, y, x + side, y + side)
    pil = photo.crop(box) if side == size else photo.resize((size, size), Image.Resampling.BICUBIC, box=box)
    if flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(pil), (x, y, side, flip)


def make_sample(
    photos: dict[str, Image.Image], names: Sequence[str], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, SampleSpec]:
    """(reference crop, distorted crop, spec) for one sample; flat crops are redrawn."""
    for _ in range(len(names) * 4):
        name = names[int(rng.integers(len(names)))]
        for _ in range(MAX_CROP_TRIES):
            ref, (x, y, side, flip) = random_crop(photos[name], size, rng)
            if not is_flat(ref):
                break
        else:
            continue  # this photograph seems to be flat everywhere at this size: pick another
        dist, kind, level = distort(ref, rng)
        parameter = 0.0 if kind == "none" else DISTORTIONS[kind].parameter_at(level)
        return ref, dist, SampleSpec(name, x, y, side, flip, kind, level, parameter)
    raise DataError(f"mini dataset: no textured {size}px crop found in photographs {', '.join(names)}")
