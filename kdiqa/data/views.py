"""Views: the exact crop/flip a model saw, as data that can be stored and replayed.

Distillation only works when the student sees the view the teacher saw ("patient and consistent"
distillation, FKD): a teacher score for one random crop is a wrong target for another. So a view is
not produced by an opaque transform but described by :class:`ViewParams` (crop box in normalised
image coordinates, flip, noise seed), which the feature cache stores next to the teacher's outputs and
:meth:`ViewSampler.apply` turns back into the bit-identical tensor, for the teacher now and the
student later.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from kdiqa.data.images import to_rgb
from kdiqa.errors import ConfigError, DataError

# Seeds are stored in a float64 vector; every integer below 2**53 survives that exactly.
MAX_SEED = 2**53
# The sampler draws seeds below 2**31 so they also fit an int32 generator seed.
_SAMPLED_SEED_BOUND = 2**31

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_MAX_ATTEMPTS = 10
_SNAP = 1e-6  # normalised coordinates this close to a pixel edge are that edge (undoes float round-off)

__all__ = ["ViewParams", "ViewSampler", "INTERPOLATIONS", "MAX_SEED"]


@dataclass(frozen=True)
class ViewParams:
    """One view of one image: what to crop, whether to mirror, and the seed of any per-view noise.

    ``crop`` is ``(x0, y0, x1, y1)`` as fractions of the image width and height, so a view sampled on
    the 1024×768 release of a dataset replays on its 512×384 copy.
    """

    crop: tuple[float, float, float, float]
    flip: bool
    seed: int

    def __post_init__(self) -> None:
        if len(self.crop) != 4:
            raise DataError(f"view params: crop must have 4 numbers (x0, y0, x1, y1), got {self.crop!r}")
        crop = tuple(float(c) for c in self.crop)
        x0, y0, x1, y1 = crop
        if not all(math.isfinite(c) for c in crop) or not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise DataError(f"view params: crop {crop} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        if not (0 <= int(self.seed) < MAX_SEED) or int(self.seed) != self.seed:
            raise DataError(f"view params: seed {self.seed!r} must be an integer in [0, 2**53)")
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "seed", int(self.seed))

    def to_array(self) -> np.ndarray:
        """``[x0, y0, x1, y1, flip, seed]`` as float64, the row the HDF5 cache stores per view."""
        return np.array([*self.crop, float(self.flip), float(self.seed)], dtype=np.float64)

    @classmethod
    def from_array(cls, values: Any) -> ViewParams:
        """Inverse of :meth:`to_array`; a malformed row is a DataError (it comes from a cache file)."""
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.shape != (6,):
            raise DataError(f"view params: expected 6 numbers [x0, y0, x1, y1, flip, seed], got {arr.shape[0]}")
        if arr[4] not in (0.0, 1.0):
            raise DataError(f"view params: flip must be 0 or 1, got {arr[4]!r}")
        if not math.isfinite(arr[5]) or arr[5] != math.floor(arr[5]):
            raise DataError(f"view params: seed must be an integer, got {arr[5]!r}")
        x0, y0, x1, y1 = (float(v) for v in arr[:4])
        return cls(crop=(x0, y0, x1, y1), flip=bool(arr[4]), seed=int(arr[5]))


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    return lo, hi


class ViewSampler:
    """Draw views of images and turn views into model inputs.

    ``size`` is the output size, an int for a square or ``(height, width)`` as in torchvision.
    In training mode a view is a random-resized crop: its area is a fraction of the image drawn
    uniformly from ``scale``, its aspect ratio is drawn log-uniformly from ``ratio``, and it is
    mirrored with probability 1/2 if ``flip``. Unlike torchvision, ``ratio`` is relative to the
    image's own aspect (1 keeps the image's shape): the crop is then stretched to ``size`` by the same
    factors as the whole image is in the eval view, so shapes look alike in training and evaluation,
    and the defaults (``scale=ratio=(1, 1)``) give the whole image, as the eval view does.
    Crop boxes are whole pixels of the image they were sampled on. In eval mode every view is the
    whole image, unflipped, seed 0 (``scale``, ``ratio`` and ``flip`` are then unused).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        train: bool,
        scale: tuple[float, float] = (1.0, 1.0),
        ratio: tuple[float, float] = (1.0, 1.0),
        flip: bool = False,
        interpolation: str = "bilinear",
    ) -> None:
        self.size = self._check_size(size)
        self.train = bool(train)
        self.scale = _pair(scale)  # scale and ratio come from a checked recipe (views.train_scale, views.train_ratio)
        self.ratio = _pair(ratio)
        self.flip = bool(flip)
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"ViewSampler: interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        self.interpolation = interpolation

    @staticmethod
    def _check_size(size: Any) -> tuple[int, int]:
        pair = (size, size) if isinstance(size, (int, np.integer)) else size
        try:
            height, width = pair
        except (TypeError, ValueError):
            raise ConfigError(f"ViewSampler: size must be an int or (height, width), got {size!r}") from None
        if isinstance(height, bool) or isinstance(width, bool):
            raise ConfigError(f"ViewSampler: size must be an int or (height, width), got {size!r}")
        if not all(isinstance(v, (int, np.integer)) and v > 0 for v in (height, width)):
            raise ConfigError(f"ViewSampler: size must be positive integers, got {size!r}")
        return int(height), int(width)

    def as_dict(self) -> dict[str, Any]:
        """The policy as plain data, e.g. for the cache's view-policy fingerprint."""
        return {
            "size": list(self.size),
            "train": self.train,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "flip": self.flip,
            "interpolation": self.interpolation,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"ViewSampler({args})"

    @staticmethod
    def eval_params() -> ViewParams:
        """The whole image, unflipped, seed 0: the view every evaluation uses."""
        return ViewParams(crop=(0.0, 0.0, 1.0, 1.0), flip=False, seed=0)

    def sample(self, image_size: tuple[int, int], rng: np.random.Generator) -> ViewParams:
        """Draw a view of an image of ``image_size = (width, height)`` (PIL's order)."""
        width, height = self._check_image_size(image_size)
        if not self.train:
            return self.eval_params()
        crop_w, crop_h = self._crop_size(width, height, rng)
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        flip = bool(rng.random() < 0.5) if self.flip else False
        seed = int(rng.integers(0, _SAMPLED_SEED_BOUND))
        crop = (left / width, top / height, (left + crop_w) / width, (top + crop_h) / height)
        return ViewParams(crop=crop, flip=flip, seed=seed)

    @staticmethod
    def _check_image_size(image_size: Any) -> tuple[int, int]:
        try:
            width, height = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise DataError(f"image size must be (width, height), got {image_size!r}") from None
        if width <= 0 or height <= 0:
            raise DataError(f"image size must be positive, got {width}x{height}")
        return width, height

    def _crop_size(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int]:
        """Crop width and height in pixels, retrying draws that do not fit (as torchvision does)."""
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        frac_w = frac_h = 1.0
        for _ in range(_MAX_ATTEMPTS):
            area = float(rng.uniform(self.scale[0], self.scale[1]))
            aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
            frac_w, frac_h = math.sqrt(area * aspect), math.sqrt(area / aspect)
            if frac_w <= 1.0 and frac_h <= 1.0:
                break
        else:  # no draw fitted: keep the last aspect as far as the image allows
            frac_w, frac_h = min(frac_w, 1.0), min(frac_h, 1.0)
        crop_w = min(width, max(1, round(frac_w * width)))
        crop_h = min(height, max(1, round(frac_h * height)))
        return crop_w, crop_h

    def apply(self, image: Image.Image, params: ViewParams) -> torch.Tensor:
        """Render a view: crop, resize to ``size``, then mirror; float32 (3, H, W) in [0, 1].

        Pure function of (image pixels, params, sampler settings), hence bit-identical on replay.
        Crop and resize are one resampling step over the (sub-pixel) box, so a view replayed on a
        smaller copy of the image is filtered correctly rather than cropped from a rounded box.
        """
        if image.mode != "RGB":
            image = to_rgb(image)
        width, height = image.size
        x0, y0, x1, y1 = params.crop
        box = (_snap(x0 * width), _snap(y0 * height), _snap(x1 * width), _snap(y1 * height))
        out_h, out_w = self.size
        view = image.resize((out_w, out_h), INTERPOLATIONS[self.interpolation], box=box)
        if params.flip:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(view, dtype=np.uint8).copy())
        return pixels.permute(2, 0, 1).contiguous().to(torch.float32).div_(255.0)

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> tuple[torch.Tensor, ViewParams]:
        params = self.sample(image.size, rng)
        return self.apply(image, params), params


def _snap(value: float) -> float:
    nearest = round(value)
    return float(nearest) if abs(value - nearest) < _SNAP else value
