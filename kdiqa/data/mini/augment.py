"""Reference augmentation: one training photograph made to look like many (scale, rotation, colour, exposure).

Why: twelve photographs are too little content for a no-reference model; varying the *reference*
before it is distorted keeps any photograph's look from standing in for its quality (see
:mod:`kdiqa.data.mini.stream` for what it changed). Used by the stream and by the dead-leaves
references, whose leaves are cut from such augmented patches.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

MIN_SCALE = 0.25
GREY_PROBABILITY = 0.2
MAX_LOG_GAMMA = 0.4


def augmented_reference(photo: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """A square crop at a random position and scale, rotated, recoloured and re-exposed (uint8 HxWx3)."""
    w, h = photo.size
    side = min(int(round(size / rng.uniform(MIN_SCALE, 1.0))), h, w)
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    img = np.array(photo.resize((size, size), Image.Resampling.BICUBIC, box=(x, y, x + side, y + side)))
    img = np.rot90(img, int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[..., rng.permutation(3)]
    if rng.random() < GREY_PROBABILITY:
        grey = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        img = np.repeat(grey[..., None], 3, axis=2)
    gamma = float(np.exp(rng.uniform(-MAX_LOG_GAMMA, MAX_LOG_GAMMA)))
    if img.dtype == np.uint8:  # 256 powers instead of one per pixel: the same numbers, ~10x faster
        return np.ascontiguousarray(exposed(np.arange(256), gamma)[img])
    return np.ascontiguousarray(exposed(img, gamma))


def exposed(values: np.ndarray, gamma: float) -> np.ndarray:
    """``255 (v / 255)^gamma`` rounded to uint8, computed in float64."""
    out = 255.0 * (np.asarray(values, dtype=np.float64) / 255.0) ** gamma
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
