"""An endless, seeded stream of freshly made, labelled mini samples with content augmentation.

Why: twelve training photographs are too little *content* for a no-reference model. Fitted on fixed
crops, or on fresh crops drawn exactly like the mini dataset's, both the tiny DP-IQA teacher and a
plain CNN reach validation SRCC ~0.65 but only 0.26–0.39 on the three test photographs: clean test
crops were scored like average ones, blur and JPEG barely ranked. What fixed most of it (measured
with the reference CNN, 400 steps: test SRCC 0.26 → 0.53) is making the *reference* vary before it
is distorted, so that no photograph's look can stand in for its quality:

- scale: crop side ``size / U(0.25, 1)`` (the dataset uses U(0.5, 1)), so textures appear at many sizes;
- rotation by a random multiple of 90°, and a random channel permutation (p = 1/2);
- grey conversion (p = 0.2);
- exposure: gamma ``e^U(-0.4, 0.4)`` on the reference, so "darker than usual" is not itself a flaw.

The reference augmentation lives in :mod:`kdiqa.data.mini.augment`. A share ``dead_leaves`` of the
references are not crops at all but dead-leaves images cut from such augmented patches
(:mod:`kdiqa.data.mini.dead_leaves`): content no photograph shows.

Then, as in :func:`kdiqa.data.mini.synthesis.make_sample`: flat crops are redrawn, 5 % stay clean, one
distortion at a uniform level, and the label ``q = 1 − sqrt(1 − MS-SSIM(distorted, its own
reference))`` — computed against the *augmented* reference, so labels stay full-reference exact.
Only training photographs are used; sample ``i`` of worker ``w`` is drawn from
``numpy.random.default_rng([seed, STREAM_BASE + w, i])``, so a stream is reproducible for a seed and
a worker count, and never repeats a dataset sample (those use streams 0–3).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from kdiqa.data.mini.augment import augmented_reference
from kdiqa.data.mini.dead_leaves import dead_leaves_reference
from kdiqa.data.mini.label import LABEL_BATCH, pseudo_mos
from kdiqa.data.mini.photographs import photo_images
from kdiqa.data.mini.synthesis import MAX_CROP_TRIES, distort, is_flat
from kdiqa.errors import DataError

STREAM_BASE = 1000


def augmented_sample(
    photos: dict[str, Image.Image], names: Sequence[str], size: int, rng: np.random.Generator, *, dead_leaves: float = 0.0
) -> tuple[np.ndarray, np.ndarray, str]:
    """(reference, distorted, photograph — "dead_leaves" for those) for one sample; flat references are redrawn.

    ``dead_leaves``: the probability that the reference is a dead-leaves image. Nothing is drawn for it
    when it is 0, so such samples stay the ones the first teacher and pool saw.
    """
    leaves = dead_leaves > 0 and rng.random() < dead_leaves
    for _ in range(len(names) * MAX_CROP_TRIES):
        if leaves:
            name, ref = "dead_leaves", dead_leaves_reference(photos, names, size, rng)
        else:
            name = names[int(rng.integers(len(names)))]
            ref = augmented_reference(photos[name], size, rng)
        if not is_flat(ref):
            break
    else:
        raise DataError(f"mini stream: no textured {size}px crop found in photographs {', '.join(names)}")
    return ref, distort(ref, rng)[0], name


class LabelledCropStream(IterableDataset):
    """Yields ``{"image": (3, size, size) float in [0, 1], "mos": float}`` forever; see the module docstring."""

    def __init__(self, photographs: Sequence[str], size: int = 64, seed: int = 0, dead_leaves: float = 0.0):
        if not photographs:
            raise DataError("mini stream: no training photographs")
        if not 0.0 <= dead_leaves <= 1.0:
            raise DataError(f"mini stream: dead_leaves is a share of the samples in [0, 1], got {dead_leaves}")
        self.photographs, self.size, self.seed = list(photographs), int(size), int(seed)
        self.dead_leaves = float(dead_leaves)

    def __iter__(self) -> Iterator[dict[str, object]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)  # labels are small batches: one thread per data worker
        photos = photo_images(self.photographs)
        index = 0
        while True:
            refs, dists = [], []
            for _ in range(LABEL_BATCH):
                rng = np.random.default_rng([self.seed, STREAM_BASE + worker, index])
                index += 1
                ref, dist, _ = augmented_sample(photos, self.photographs, self.size, rng, dead_leaves=self.dead_leaves)
                refs.append(ref)
                dists.append(dist)
            labels = pseudo_mos(np.stack(refs), np.stack(dists))
            for dist, label in zip(dists, labels, strict=True):
                image = torch.from_numpy(np.array(dist)).permute(2, 0, 1).float() / 255.0  # a copy: may be read-only
                yield {"image": image, "mos": torch.tensor(float(label), dtype=torch.float32)}
