"""Benchmark: a pyiqa metric as a kdiqa teacher (``kdiqa cache``, batched) vs pyiqa's own scoring, one image a call.

    python benchmarks/pyiqa_throughput.py [--metric topiq_nr] [--images 32] [--size 224] [--batch 8]
        [--rounds 3] [--threads 1] [--metric-options '{"pretrained": false, "backbone_pretrain": false}']

Needs pyiqa (``pip install 'kdiqa[pyiqa]'``; PolyForm Noncommercial). Random weights by default (the
metric's pretrained switches off, so nothing is needed from the network): speed does not depend on the
weights' values.

Same images for both: ``--images`` JPEGs of ``--size``² pixels (crops of scikit-image's photographs), so
pyiqa, which scores an image at its own resolution, and kdiqa, whose evaluation view is the whole image
resized to ``views.size``, run the network on the same input size. The two paths:

- kdiqa: :func:`kdiqa.cache.build_cache` over the images (one view each, the evaluation view, batches of
  ``--batch``, score only, float16 file), i.e. what ``kdiqa cache`` runs: decode, view, teacher forward,
  HDF5 write, and the teacher fingerprint (a hash of every weight, once per run);
- pyiqa: ``metric(path)`` per image, as pyiqa's README and ``pyiqa`` command score a folder: decode,
  forward at batch 1.

Both use the very same metric object (built once, through kdiqa's no-download guard). Rounds are
interleaved (the order reversed every round); each figure is the median over rounds of images per
second. The scores of the two paths are compared too (kdiqa maps pyiqa's raw score onto [0, 1]; mapped
back, they should agree up to the two image decoders' rounding).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.measure import count_parameters, machine_context  # noqa: E402

DEFAULT_OPTIONS = {"topiq_nr": {"pretrained": False, "backbone_pretrain": False}, "cnniqa": {"pretrained": None},
                   "musiq": {"pretrained": False}, "wadiqam_nr": {"pretrained": False}}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "motorcycle_left", "retina")


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` random square crops of scikit-image's colour photographs, resized to ``size``, as JPEG (q 95)."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        try:
            image = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a photograph missing from this scikit-image: use the others
            continue
        if image.ndim == 3 and image.shape[2] >= 3:
            photos.append(Image.fromarray(np.asarray(image)[..., :3]))
    paths = []
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, photo.size[0] - side + 1)), int(rng.integers(0, photo.size[1] - side + 1))
        path = folder / f"{i:04d}.jpg"
        photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC).save(path, quality=95)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metric", default="topiq_nr")
    parser.add_argument("--metric-options", help="JSON: pyiqa architecture options (default: the metric's pretrained switches off)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from kdiqa.cache import CacheSpec, build_cache
    from kdiqa.data.sample import IQASample
    from kdiqa.data.views import ViewSampler
    from kdiqa.errors import KdiqaError
    from kdiqa.registry import TEACHERS

    options = json.loads(args.metric_options) if args.metric_options else DEFAULT_OPTIONS.get(args.metric, {})
    try:
        teacher = TEACHERS.build("pyiqa", metric=args.metric, metric_options=options).eval()
    except KdiqaError as exc:
        print(f"pyiqa_throughput: {exc}", file=sys.stderr)
        return 2
    metric = teacher.metric
    import pyiqa

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_images(folder, args.images, args.size)
        samples = [IQASample(path=str(p), mos=0.5, mos_raw=0.5, split="train") for p in paths]
        sampler = ViewSampler(args.size, train=False)

        def kdiqa_cache() -> np.ndarray:
            import h5py

            out = folder / "cache.h5"
            build_cache(CacheSpec(sampler, features=[], batch_size=args.batch), teacher, samples, out,
                        device="cpu", progress=False, force=True)
            with h5py.File(out, "r") as f:
                scores = np.asarray(f["teacher/score"])
            out.unlink()
            return scores

        def pyiqa_one_by_one() -> np.ndarray:
            with torch.no_grad():
                return np.array([float(metric(str(p)).reshape(-1)[0]) for p in paths])

        runs = {"kdiqa cache (batched)": kdiqa_cache, "pyiqa, one image a call": pyiqa_one_by_one}
        times: dict[str, list[float]] = {k: [] for k in runs}
        scores: dict[str, np.ndarray] = {}
        for r in range(args.rounds):
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                start = time.perf_counter()
                scores[name] = runs[name]()
                times[name].append(time.perf_counter() - start)

    context = machine_context()
    print(f"# {context['date']}; {context['cpu']}, load average {context['load average']}")
    print(f"# python {context['python']}, torch {context['torch']}, pyiqa {pyiqa.__version__}, threads {args.threads}")
    params = count_parameters(metric.net)
    print(f"# metric {args.metric} ({params / 1e6:.1f} M parameters, options {options}), {args.images} images of "
          f"{args.size}x{args.size}, kdiqa batch {args.batch}, {args.rounds} interleaved rounds, median (min-max)")
    rates = {}
    for name, seconds in times.items():
        rates[name] = [args.images / s for s in seconds]
        print(f"{name:<26}{statistics.median(rates[name]):>9.2f} img/s  ({min(rates[name]):.2f}-{max(rates[name]):.2f})")
    first, second = runs
    print(f"speed-up of kdiqa cache over pyiqa one by one: {statistics.median(rates[first]) / statistics.median(rates[second]):.2f}x")
    mapped_back = teacher.raw_score(torch.from_numpy(scores[first])).numpy()
    print(f"scores: max |kdiqa cache (mapped back) - pyiqa| = {np.abs(mapped_back - scores[second]).max():.2e} "
          f"(raw range {scores[second].min():.3f}..{scores[second].max():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
