"""The embedded default dataset ("mini"): weakly labelled distorted crops of scikit-image's photographs.

Why: a user with no weights and no data must still be able to run the whole flow. Like KADIS-700k,
the labels are not human opinions but full-reference scores of each distorted image against its
own pristine version, so any number of samples can be made from a handful of photographs.

How a sample is made (everything drawn from ``numpy.random.default_rng([seed, split, index])``, so a
sample depends only on the seed, its split and its index):

1. Photographs: the 18 natural photographs scikit-image ships inside its wheel (no download needed):
   astronaut, brick, camera, cell, chelsea, clock, coffee, coins, grass, gravel, hubble_deep_field,
   immunohistochemistry, microaneurysms, moon, motorcycle (left view of ``stereo_motorcycle``), page,
   retina, rocket; grey ones are copied to three channels. Excluded: synthetic images (checkerboard,
   text, logo, shepp_logan_phantom, colorwheel, binary_blobs, horse), ``cat`` (the same photograph as
   chelsea), ``lfw_subset`` (25 px faces) and everything that needs pooch and a download (brain,
   cells3d, eagle, kidney, lily, skin, ...). Any of the 18 that fails to load is skipped and the
   list actually used is in meta.json. They are split *by photograph* into train/val/test (seeded;
   12/3/3, val and test each get one scene, one scientific image and one texture/object), so no
   content crosses splits.
2. Crop: a photograph of the split is chosen uniformly; a square of side ``size / u``, ``u ~ U(0.5,
   1)`` (capped at the photograph's short side), at a uniform random position, is resized to
   ``size`` px (bicubic, antialiased) and mirrored left-right with probability 1/2. Flat crops —
   standard deviation of the grey level < 6 or mean gradient magnitude < 3 (0–255 scale) — are
   redrawn: blur or pixelation of a patch of sky changes nothing the label can see, so such samples
   would only teach noise.
3. Distortion: with probability 0.05 none; otherwise one of :data:`kdiqa.data.distortions.DISTORTIONS`
   drawn uniformly — Gaussian blur (σ 0.5–5 px), additive Gaussian noise (σ 3–60), JPEG (quality
   40–2), contrast loss (factor 0.9–0.15 around the mean grey), pixelation (blocks of 1.5–10 px),
   desaturation (25–100 %, drawn only for crops that have colour), brightness (gamma e^±0.15 to
   e^±1.2) — at ``level ~ U(0, 1)``, mapped log-uniformly onto that parameter range.
4. Label (pseudo-MOS, higher is better, in [0, 1]): ``q = 1 − sqrt(1 − MS-SSIM(distorted, reference))``
   where the reference is the clean crop itself, both as saved (uint8). MS-SSIM is the three-scale
   version on RGB in 0–255: per channel, 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03,
   reflect padding, 2×2 average pooling between scales, negative terms clipped to 0, and the first
   three of Wang et al.'s scale weights renormalised (0.0448, 0.2856, 0.3001)/0.6305 — the same
   computation as torchmetrics' ``multiscale_structural_similarity_index_measure(data_range=255,
   betas=<those three>)`` (computed here in float32 on centred values, within 1e-5 of it), whose size
   check refuses crops under 44 px although three scales need only 24. The square root spreads the
   labels: MS-SSIM crowds near 1 for all but strong distortions. The result is clamped to [0, 1] and
   written with 6 decimals; a distorted crop identical to its reference (and every clean one) gets 1.

Output (``root``): ``images/{split}/{i:06d}.png``, ``labels.csv`` in the generic CSV format
(``path,mos,std,split,group``; ``group`` is the photograph's name, ``std`` empty), ``details.csv``
(distortion, level and crop of every sample, for analysis) and ``meta.json``. The folder is built
beside ``root`` and moved into place in one ``os.replace``, so a folder named ``root`` is always
complete; a complete folder made with the same parameters is reused.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from kdiqa.data.distortions import DISTORTIONS, apply_distortion
from kdiqa.data.sample import SPLITS, LoadedDataset
from kdiqa.errors import DataError
from kdiqa.registry import DATASETS

VERSION = 1
KIND = "kdiqa-mini"
CLEAN_FRACTION = 0.05
MIN_STD = 6.0
MIN_GRADIENT = 3.0
MAX_CROP_TRIES = 100
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001)
LABEL_DEFINITION = (
    "q = 1 - sqrt(1 - MS-SSIM(distorted, own clean crop)), clamped to [0, 1]; MS-SSIM with 3 scales "
    "on RGB 0-255 (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, reflect padding, negative terms "
    "clipped to 0, betas (0.0448, 0.2856, 0.3001) renormalised), as torchmetrics computes it"
)

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

# ---------------------------------------------------------------------------------------------------
# Photographs and splits


@functools.cache
def _load_photograph(name: str) -> np.ndarray:
    """One photograph as a read-only RGB uint8 array (cached: decoding all 18 takes ~0.5 s)."""
    import skimage.data

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


# ---------------------------------------------------------------------------------------------------
# One sample


def is_flat(img: np.ndarray, min_std: float = MIN_STD, min_gradient: float = MIN_GRADIENT) -> bool:
    """True if the crop has too little texture for blur or pixelation to change its label."""
    g = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if float(g.std()) < min_std:
        return True
    gx = np.diff(g, axis=1)[:-1, :]
    gy = np.diff(g, axis=0)[:, :-1]
    return float(np.sqrt(gx * gx + gy * gy).mean()) < min_gradient


def _has_colour(img: np.ndarray) -> bool:
    i = img.astype(np.int16)
    return bool(np.abs(i[..., 0] - i[..., 1]).mean() + np.abs(i[..., 1] - i[..., 2]).mean() > 2.0)


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
        if rng.random() < CLEAN_FRACTION:
            return ref, ref, SampleSpec(name, x, y, side, flip, "none", 0.0, 0.0)
        # Desaturating a grey crop changes nothing: draw saturation only where there is colour.
        kinds = list(DISTORTIONS) if _has_colour(ref) else [k for k in DISTORTIONS if k != "saturation"]
        kind = kinds[int(rng.integers(len(kinds)))]
        level = float(rng.random())
        dist = apply_distortion(ref, kind, level, rng)
        return ref, dist, SampleSpec(name, x, y, side, flip, kind, level, DISTORTIONS[kind].parameter_at(level))
    raise DataError(f"mini dataset: no textured {size}px crop found in photographs {', '.join(names)}")


# ---------------------------------------------------------------------------------------------------
# Label


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


_BLUR_MATRICES: dict[int, torch.Tensor] = {}


def _blur_matrix(n: int) -> torch.Tensor:
    """(n, n) matrix of "reflect-pad by 5, then 11-tap Gaussian": a blur becomes two matrix products.

    On small images one GEMM is several times faster than a grouped convolution on CPU.
    """
    if n not in _BLUR_MATRICES:
        g = _gaussian_1d()
        pad = (len(g) - 1) // 2
        if n <= pad:
            raise DataError(f"MS-SSIM: a {n}px scale is too small for an 11-tap window")
        m = np.zeros((n, n))
        for i in range(n):
            for k, gk in enumerate(g):
                p = i + k - pad
                p = -p if p < 0 else (2 * (n - 1) - p if p >= n else p)
                m[i, p] += gk
        _BLUR_MATRICES[n] = torch.from_numpy(m).to(torch.float32)
    return _BLUR_MATRICES[n]


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of the last two (square) dims with reflect padding, output the same size."""
    m = _blur_matrix(x.shape[-1])
    return torch.matmul(torch.matmul(m, x), m.T)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, betas: Sequence[float] = MS_SSIM_BETAS) -> torch.Tensor:
    """Batched multi-scale SSIM of square (B, C, H, H) images in 0–255, one value per image (float64).

    Follows torchmetrics' computation (reflect-padded Gaussian statistics; the contrast-structure
    term averaged over the unpadded interior, the full SSIM term over the whole image at the
    coarsest scale; ReLU on each term); ``betas`` are renormalised to sum to 1. Computed in float32
    (4x faster than float64 here) on values centred at 128 so the variances keep their precision;
    agrees with torchmetrics in float64 to ~1e-6.
    """
    x = x.to(torch.float32) - 128.0
    y = y.to(torch.float32) - 128.0
    b = x.shape[0]
    w = torch.tensor(betas, dtype=torch.float64)
    w = w / w.sum()
    pad = 5
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    terms = []
    for scale in range(len(betas)):
        mx, my, sxx, syy, sxy = _blur(torch.cat([x, y, x * x, y * y, x * y])).split(b)
        vx = (sxx - mx * mx).clamp_min(0)
        vy = (syy - my * my).clamp_min(0)
        cs_map = (2 * (sxy - mx * my) + c2) / (vx + vy + c2)
        if scale < len(betas) - 1:
            inner = cs_map[..., pad:-pad, pad:-pad] if min(cs_map.shape[-2:]) > 2 * pad else cs_map
            terms.append(inner.reshape(b, -1).mean(-1, dtype=torch.float64).clamp_min(0))
            x = F.avg_pool2d(x, 2)
            y = F.avg_pool2d(y, 2)
        else:
            mx, my = mx + 128.0, my + 128.0
            # (2 mx my + C1) / (mx² + my² + C1), written as 1 − (mx − my)² / (...) to stay exact near 1.
            lum = 1.0 - (mx - my) ** 2 / (mx * mx + my * my + c1)
            terms.append((lum * cs_map).reshape(b, -1).mean(-1, dtype=torch.float64).clamp_min(0))
    return torch.prod(torch.stack(terms) ** w.view(-1, 1), dim=0)


def pseudo_mos(reference: np.ndarray, distorted: np.ndarray) -> np.ndarray:
    """Labels for a batch of (B, H, W, 3) uint8 pairs: q = 1 − sqrt(1 − MS-SSIM), clamped to [0, 1]."""
    ref = torch.from_numpy(np.array(reference)).permute(0, 3, 1, 2)  # a copy: inputs may be read-only
    dist = torch.from_numpy(np.array(distorted)).permute(0, 3, 1, 2)
    score = ms_ssim(dist, ref).clamp(0.0, 1.0)
    q = 1.0 - torch.sqrt(1.0 - score)
    q = torch.where(torch.from_numpy((reference == distorted).reshape(len(ref), -1).all(1)), 1.0, q)
    return q.clamp(0.0, 1.0).numpy()


# ---------------------------------------------------------------------------------------------------
# The folder


def _params(size: int, n_train: int, n_val: int, n_test: int, seed: int, held_out: dict[str, list[str]] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"version": VERSION, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed}
    if held_out is not None:  # only when given, so folders made before this option still match
        params["held_out"] = held_out
    return params


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


def _is_complete(root: Path, params: dict[str, Any]) -> bool:
    """A folder made by make_mini with these parameters (meta.json is written last)."""
    meta_path = root / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("kind") != KIND or meta.get("params") != params:
        return False
    try:
        with open(root / "labels.csv", newline="") as f:
            n_rows = sum(1 for _ in f) - 1
    except OSError:
        return False
    return n_rows == params["n_train"] + params["n_val"] + params["n_test"]


def _is_ours(root: Path) -> bool:
    """Only folders that make_mini wrote (or empty ones) may be replaced: never a user's own data."""
    if not any(root.iterdir()):
        return True
    try:
        return json.loads((root / "meta.json").read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def _build_chunk(
    tmp: str, split: str, split_index: int, start: int, stop: int, size: int, seed: int, names: list[str]
) -> tuple[list[float], list[SampleSpec]]:
    """Make, label and write samples [start, stop) of one split; returns labels and specs in order."""
    photos = _worker_photos(names)
    refs, dists, specs = [], [], []
    for i in range(start, stop):
        ref, dist, spec = make_sample(photos, names, size, np.random.default_rng([seed, split_index, i]))
        refs.append(ref)
        dists.append(dist)
        specs.append(spec)
        Image.fromarray(dist).save(os.path.join(tmp, "images", split, f"{i:06d}.png"), compress_level=1)
    # Small label batches stay in cache: ~2x faster than one big batch, and the same numbers.
    labels = [pseudo_mos(np.stack(refs[k : k + 32]), np.stack(dists[k : k + 32])) for k in range(0, len(refs), 32)]
    labels = np.concatenate(labels) if labels else np.zeros(0)
    return [float(v) for v in labels], specs


_PHOTO_CACHE: dict[str, Image.Image] = {}


def _worker_photos(names: Sequence[str]) -> dict[str, Image.Image]:
    """The photographs as PIL images (crop and resize in one C call), loaded once per process."""
    for n in names:
        if n not in _PHOTO_CACHE:
            _PHOTO_CACHE[n] = Image.fromarray(_load_photograph(n))
    return {n: _PHOTO_CACHE[n] for n in names}


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_chunks(
    jobs: list[tuple], workers: int, on_done: Callable[[int], None]
) -> list[tuple[list[float], list[SampleSpec]]]:
    if workers <= 0:
        # One torch thread: the label batches are small, and OpenMP barriers on cores shared with other
        # processes stall badly (measured 8x slower with 2 threads under load). Parallelism = workers.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results = []
            for job in jobs:
                results.append(_build_chunk(*job))
                on_done(job[4] - job[3])
            return results
        finally:
            torch.set_num_threads(threads)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(_build_chunk, *job) for job in jobs]
        results = []
        for job, fut in zip(jobs, futures, strict=True):
            results.append(fut.result())
            on_done(job[4] - job[3])
        return results


def make_mini(
    root: str | Path,
    *,
    size: int = 64,
    n_train: int = 6000,
    n_val: int = 600,
    n_test: int = 600,
    seed: int = 0,
    held_out: dict[str, Sequence[str]] | None = None,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Build (or reuse) the mini dataset in ``root``; returns the path of its ``labels.csv``.

    ``workers`` > 0 builds in that many processes; the result is byte-identical whatever the number.
    ``held_out`` ({"val": [...], "test": [...]}) replaces the seeded split by photograph with an explicit one.
    """
    root = Path(root)
    if size < 24:
        raise DataError(f"mini dataset: size {size} is too small (three MS-SSIM scales need at least 24 px)")
    for key, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if n < 0:
            raise DataError(f"mini dataset: {key} must be >= 0, got {n}")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"mini dataset: seed must be a non-negative integer, got {seed!r}")
    held = None if held_out is None else {k: sorted(held_out[k]) for k in held_out}
    params = _params(size, n_train, n_val, n_test, seed, held)
    if _is_complete(root, params):
        return root / "labels.csv"
    if root.exists() and (not root.is_dir() or not _is_ours(root)):
        raise DataError(f"{root}: exists and is not a mini dataset folder made by kdiqa; refusing to overwrite it")

    photos = load_photographs()
    splits = split_photographs(list(photos), seed) if held is None else held_out_split(list(photos), held)
    counts = {"train": n_train, "val": n_val, "test": n_test}

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        jobs = []
        chunk = 256
        for split_index, split in enumerate(SPLITS):
            (tmp / "images" / split).mkdir(parents=True)
            for start in range(0, counts[split], chunk):
                stop = min(start + chunk, counts[split])
                jobs.append((str(tmp), split, split_index, start, stop, size, seed, splits[split]))
        with _progress_bar(sum(counts.values()), progress) as bar:
            results = _run_chunks(jobs, workers, bar.update)
        _write_tables(tmp, jobs, results)
        per_type: dict[str, int] = {}
        for _, specs in results:
            for s in specs:
                per_type[s.distortion] = per_type.get(s.distortion, 0) + 1
        meta = {
            "kind": KIND,
            "params": params,
            "version": VERSION,
            "seed": seed,
            "size": size,
            "counts": counts,
            "photographs": splits,
            "source": "scikit-image sample photographs (skimage.data), grey ones copied to RGB",
            "distortions": {
                d.name: {"parameter": d.parameter, "mild": d.mild, "strong": d.strong} for d in DISTORTIONS.values()
            },
            "samples_per_distortion": dict(sorted(per_type.items())),
            "clean_fraction": CLEAN_FRACTION,
            "crop": f"side = size / U(0.5, 1) (capped at the short side), random position, bicubic resize, flip p=0.5; "
            f"rejected if grey std < {MIN_STD} or mean gradient magnitude < {MIN_GRADIENT} (0-255)",
            "label": LABEL_DEFINITION,
        }
        # meta.json is written last: a folder without it is never taken as complete.
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, root, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root / "labels.csv"


def _write_tables(tmp: Path, jobs: list[tuple], results: list[tuple[list[float], list[SampleSpec]]]) -> None:
    labels = io.StringIO(newline="")
    details = io.StringIO(newline="")
    lw = csv.writer(labels, lineterminator="\n")
    dw = csv.writer(details, lineterminator="\n")
    lw.writerow(["path", "mos", "std", "split", "group"])
    dw.writerow(["path", "distortion", "level", "parameter", "photo", "x", "y", "side", "flip"])
    for job, (mos, specs) in zip(jobs, results, strict=True):
        split, start = job[1], job[3]
        for k, (q, s) in enumerate(zip(mos, specs, strict=True)):
            path = f"images/{split}/{start + k:06d}.png"
            lw.writerow([path, f"{q:.6f}", "", split, s.photo])
            dw.writerow(
                [path, s.distortion, f"{s.level:.6f}", f"{s.parameter:.6g}", s.photo, s.x, s.y, s.side, int(s.flip)]
            )
    (tmp / "labels.csv").write_text(labels.getvalue())
    (tmp / "details.csv").write_text(details.getvalue())


def _move_into_place(tmp: Path, root: Path, params: dict[str, Any]) -> None:
    """Replace ``root`` by the finished ``tmp`` (a directory can only be replaced when empty)."""
    old = None
    if root.exists():
        if _is_complete(root, params):  # another process finished the same build meanwhile
            return
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, old / "x")
    os.replace(tmp, root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="mini dataset", unit="img", disable=not enabled, leave=False)


# ---------------------------------------------------------------------------------------------------
# The registered dataset


@DATASETS.register("mini")
def mini(
    root: str = "data/mini",
    *,
    on_bad_row: str = "error",
    size: int = 64,
    n_train: int = 6000,
    n_val: int = 600,
    n_test: int = 600,
    seed: int = 0,
    held_out: dict[str, list[str]] | None = None,
) -> LoadedDataset:
    """The embedded default dataset, built in ``root`` on first use and read through the ``csv`` loader."""
    make_mini(root, size=size, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, held_out=held_out)
    loaded = DATASETS.get("csv")(root, file="labels.csv", mos_range=[0, 1], on_bad_row=on_bad_row)
    loaded.name = "mini"
    loaded.has_official_split = True
    return loaded
