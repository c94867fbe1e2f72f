"""Synthetic distortions at a continuous strength, for the embedded default dataset.

Each distortion maps a clean RGB uint8 image and a ``level`` in [0, 1] to a distorted uint8 image of
the same shape. The level is mapped to the distortion's physical parameter by *log* interpolation
between a mild and a strong end (``parameter = mild · (strong / mild) ** level``), so drawing the
level uniformly draws the parameter log-uniformly: perceived strength grows roughly with the log of
most of these parameters, and a log-uniform draw spreads the labels instead of piling them up at
"destroyed". Level 0 is still a visible distortion; an undistorted sample is simply not distorted.

The ranges are tuned for small crops (32–128 px); on 64 px crops each type spans roughly the whole
label range of :mod:`kdiqa.data.mini` except ``saturation``, which the full-reference label barely
sees (a known blind spot of SSIM-family metrics).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from kdiqa.errors import DataError

Apply = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Distortion:
    """A named distortion, the physical meaning of its parameter and the range it spans."""

    name: str
    parameter: str  # what the number means, for meta.json and the README
    mild: float  # parameter at level 0
    strong: float  # parameter at level 1
    apply: Apply  # (image uint8 HxWx3, parameter, rng) -> image uint8 HxWx3

    def parameter_at(self, level: float) -> float:
        return self.mild * (self.strong / self.mild) ** float(level)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _luma(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def gaussian_blur(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect", truncate=3.0))


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return _to_uint8(img.astype(np.float32) + noise)


def jpeg(img: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    # 4:2:0 chroma subsampling, as cameras and the web use it; PIL's default at quality < 90 anyway.
    Image.fromarray(img).save(buf, format="JPEG", quality=int(round(quality)), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"))


def contrast_loss(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Shrink deviations from the mean grey level by ``factor`` (mean brightness is kept)."""
    x = img.astype(np.float32)
    mean = np.float32(_luma(x).mean())
    return _to_uint8(mean + (x - mean) * np.float32(factor))


def pixelate(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Average over blocks of ``factor`` pixels (box downsampling), then blow the blocks back up."""
    h, w = img.shape[:2]
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    pil = Image.fromarray(img).resize(small, Image.Resampling.BOX)
    return np.asarray(pil.resize((w, h), Image.Resampling.NEAREST))


def desaturate(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Blend towards the grey image by ``amount`` (1 = fully grey)."""
    x = img.astype(np.float32)
    grey = _luma(x)[..., None]
    return _to_uint8(x + (grey - x) * np.float32(min(amount, 1.0)))


def brightness(img: np.ndarray, log_gamma: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma change by exp(±log_gamma), darkening or brightening with equal chance (under/over exposure)."""
    gamma = math.exp(log_gamma if rng.random() < 0.5 else -log_gamma)
    x = img.astype(np.float32) / 255.0
    return _to_uint8(255.0 * np.power(x, np.float32(gamma)))


DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("blur", "Gaussian sigma (px)", 0.5, 5.0, gaussian_blur),
        Distortion("noise", "additive Gaussian sigma (0-255)", 3.0, 60.0, gaussian_noise),
        Distortion("jpeg", "JPEG quality", 40.0, 2.0, jpeg),
        Distortion("contrast", "contrast factor", 0.9, 0.15, contrast_loss),
        Distortion("pixelate", "block size (px)", 1.5, 10.0, pixelate),
        Distortion("saturation", "desaturation amount", 0.25, 1.0, desaturate),
        Distortion("brightness", "|log gamma|", 0.15, 1.2, brightness),
    )
}


def apply_distortion(img: np.ndarray, name: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """Distort an RGB uint8 image at ``level`` in [0, 1] (0 = mildest, 1 = strongest)."""
    try:
        distortion = DISTORTIONS[name]
    except KeyError:
        raise DataError(f"unknown distortion {name!r} (known: {', '.join(DISTORTIONS)})") from None
    if not 0.0 <= level <= 1.0:
        raise DataError(f"distortion {name!r}: level {level} is outside [0, 1]")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"distortion {name!r}: expected an RGB uint8 image, got {img.dtype} {img.shape}")
    return distortion.apply(img, distortion.parameter_at(level), rng)
