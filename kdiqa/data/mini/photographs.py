"""The mini dataset's photographs, and their split by photograph.

The 18 natural photographs scikit-image ships inside its wheel (:data:`PHOTOGRAPHS`, no download
needed; "motorcycle" is the left view of ``stereo_motorcycle``); grey ones are copied to three
channels. Excluded: synthetic images (checkerboard, text, logo, shepp_logan_phantom, colorwheel,
binary_blobs, horse), ``cat`` (the same photograph as chelsea), ``lfw_subset`` (25 px faces) and
everything that needs pooch and a download (brain, cells3d, eagle, kidney, lily, skin, ...). Any of
the 18 that fails to load is skipped and the list actually used is in meta.json. They are split *by
photograph* into train/val/test (seeded; 12/3/3, val and test each get one scene, one scientific
image and one texture/object), so no content crosses splits.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from kdiqa.errors import DataError

# Natural photographs inside scikit-image's wheel (no download); the names of skimage.data's loaders,
# except "motorcycle", the left view of stereo_motorcycle().
PHOTOGRAPHS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "motorcycle", "page",
    "retina", "rocket",
)  # fmt: skip

# What each photograph shows, so that every split gets some of each kind.
PHOTO_KINDS: dict[str, str] = {
    **dict.fromkeys(("astronaut", "camera", "chelsea", "coffee", "motorcycle", "rocket"), "scene"),
    **dict.fromkeys(
        ("cell", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "retina"), "science"
    ),
    **dict.fromkeys(("brick", "clock", "coins", "grass", "gravel", "page"), "texture"),
}


@functools.cache
def _load_photograph(name: str) -> np.ndarray:
    """One photograph as a read-only RGB uint8 array (cached: decoding all 18 takes ~0.5 s)."""
    import skimage.data  # third-party, imported on first use: only the mini dataset needs scikit-image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3].astype(np.uint8))
    img.flags.writeable = False
    return img


def load_photographs(names: Sequence[str] = PHOTOGRAPHS) -> dict[str, np.ndarray]:
    """The photographs that load offline, as RGB uint8 arrays; any that need a download are skipped."""
    photos: dict[str, np.ndarray] = {}
    for name in names:
        try:
            photos[name] = _load_photograph(name)
        except Exception:  # missing file, optional fetcher (pooch) or no network: not usable here
            continue
    if len(photos) < 3:
        raise DataError(f"scikit-image ships only {len(photos)} of the mini dataset's photographs; need at least 3")
    return photos


@functools.cache
def _photo_image(name: str) -> Image.Image:
    return Image.fromarray(_load_photograph(name))


def photo_images(names: Sequence[str]) -> dict[str, Image.Image]:
    """The photographs as PIL images (crop and resize in one C call), made once per process."""
    return {n: _photo_image(n) for n in names}


def split_photographs(names: Sequence[str], seed: int) -> dict[str, list[str]]:
    """A seeded split by photograph: one sixth each for val and test (at least one), the rest train.

    The held-out photographs are drawn in turn from each kind (scene, science, texture/object), so
    that with only three test photographs the test set still shows the same mix of content as the
    training set, rather than, by chance, three microscope images. (It does not make the estimate
    less noisy: a pixel-statistics baseline's test SRCC still spans 0.42–0.62 over seeds 0–4.)
    """
    rng = np.random.default_rng([seed, 7919])
    by_kind: dict[str, list[str]] = {}
    for name in sorted(names):
        by_kind.setdefault(PHOTO_KINDS.get(name, "other"), []).append(name)
    kinds = [by_kind[k] for k in sorted(by_kind)]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    kinds = [[members[i] for i in rng.permutation(len(members))] for members in kinds]
    interleaved = [m[i] for i in range(max(map(len, kinds))) for m in kinds if i < len(m)]
    n_held = max(1, round(len(interleaved) / 6))
    return {
        "train": sorted(interleaved[2 * n_held :]),
        "val": sorted(interleaved[:n_held]),
        "test": sorted(interleaved[n_held : 2 * n_held]),
    }


def held_out_split(names: Sequence[str], held_out: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """An explicit split: ``held_out`` names the val and test photographs, every other one trains.

    Why: photograph folds. A teacher fitted on one split's training photographs may be compared across
    several val/test assignments of the photographs it never saw (``benchmarks/kd_gain.py --folds``).
    """
    if set(held_out) != {"val", "test"}:
        raise DataError(f"mini dataset: held_out needs exactly the keys val and test, got {sorted(held_out)}")
    val, test = list(held_out["val"]), list(held_out["test"])
    unknown = sorted(set(val + test) - set(names))
    if unknown:
        raise DataError(f"mini dataset: held_out names unknown photographs {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    if not val or not test or set(val) & set(test):
        raise DataError("mini dataset: held_out.val and held_out.test must be non-empty and share no photograph")
    train = sorted(set(names) - set(val) - set(test))
    if not train:
        raise DataError("mini dataset: held_out leaves no training photograph")
    return {"train": train, "val": sorted(val), "test": sorted(test)}
