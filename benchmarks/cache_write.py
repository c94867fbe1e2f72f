"""Benchmark: what writing the feature cache adds to running the teacher.

    .venv/bin/python benchmarks/cache_write.py [--images 256] [--views 2] [--teacher conv|dpiqa|both]

Prints, measured side by side in one run (best of interleaved repeats):
- in memory: (teacher forward + storing its outputs) / (teacher forward alone), over the same
  pre-rendered batches: the cost of the cache's own work (cast, checks, HDF5 writes, two flushes a batch);
- end to end: ``build_cache`` (decode, views, forward, write, fingerprints, finalise) / the same decode +
  views + forward loop without a cache.
Goal: ≤ 1.05. Teachers: ``conv``, a small CNN that returns an 8×16×16 quality map at 64 px (cheap, so the
write share is as large as it gets), and ``dpiqa``, the tiny DP-IQA teacher of the embedded default
(same map size; its forward cost is closer to, though far below, the real 1B-parameter teacher's).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.cache import CacheSpec, build_cache  # noqa: E402
from kdiqa.cache import partial as P  # noqa: E402
from kdiqa.cache.loop import BlockViews, CacheRun  # noqa: E402
from kdiqa.cache.plan import CachePlan  # noqa: E402
from kdiqa.cache.progress import printer  # noqa: E402
from kdiqa.data.sample import IQASample  # noqa: E402
from kdiqa.data.views import ViewSampler  # noqa: E402
from kdiqa.measure import count_parameters  # noqa: E402
from kdiqa.teachers.base import Teacher, TeacherOutput  # noqa: E402

VIEW_SIZE = 64


class ConvTeacher(Teacher):
    """A small CNN with a DP-IQA-shaped output: score + an 8×16×16 quality map at 64 px input."""

    name = "bench-conv"

    def __init__(self, width: int = 32):
        super().__init__(width=width)
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 8, 1),
        )
        self.head = nn.Linear(8, 1)

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        qmap = self.body(images)
        return TeacherOutput(score=self.head(qmap.mean((2, 3))).squeeze(1), features={"quality_map": qmap})


def make_teacher(kind: str) -> Teacher:
    if kind == "conv":
        return ConvTeacher()
    from kdiqa.registry import TEACHERS

    return TEACHERS.build("dpiqa", preset="tiny")


def make_images(root: Path, n: int, seed: int = 0) -> list[IQASample]:
    """Smooth random photographs-to-be (JPEG, 96–160 px a side), decoded like real dataset files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(96, 161, 2))
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))
        path = root / f"{i:05d}.jpg"
        image.save(path, quality=90)
        samples.append(IQASample(str(path), mos=float(rng.uniform()), mos_raw=0.0, split="train"))
    return samples


def sampler() -> ViewSampler:
    return ViewSampler(VIEW_SIZE, train=True, scale=(0.25, 1.0), ratio=(0.75, 1.33), flip=True)


def spec(views: int, batch: int) -> CacheSpec:
    return CacheSpec(sampler(), views_per_image=views, features=["quality_map"], batch_size=batch)


def render_batches(samples: list[IQASample], views: int, batch: int) -> list[dict]:
    plan = CachePlan(len(samples), views, batch)
    return [BlockViews(samples, spec(views, batch), plan, plan.blocks())[j] for j in range(len(plan.blocks()))]


def _run(teacher: Teacher, samples: list[IQASample], views: int, batch: int, partial: Path) -> CacheRun:
    """The writer's own machinery (its inner parts: a benchmark may look inside)."""
    if partial.exists():
        partial.unlink()
    plan = CachePlan(len(samples), views, batch)
    return CacheRun(spec(views, batch), teacher, samples, plan, partial, {}, printer(False))


def in_memory(teacher: Teacher, samples: list[IQASample], batches: list[dict], views: int, folder: Path,
              repeats: int) -> tuple[float, float]:
    """(forward alone, forward + store) seconds over the same pre-rendered batches.

    Each batch is timed ``repeats`` times on each side, alternating which side goes first, and the
    fastest time counts (as timeit does): on a shared machine other processes only ever add time.
    """
    run = _run(teacher, samples, views, len(batches[0]["rows"]), folder / "mem.h5.partial")
    forward = stored = 0.0
    sink = None
    with torch.no_grad():
        for j, b in enumerate(batches):
            best = {"forward": float("inf"), "stored": float("inf")}
            for r in range(repeats):
                for side in ("forward", "stored") if (j + r) % 2 == 0 else ("stored", "forward"):
                    start = time.perf_counter()
                    out = teacher(b["images"])
                    if side == "stored":
                        arrays = run.arrays(out, b)
                        if sink is None:
                            P.create(run.partial, run.fingerprints, run.meta(arrays), arrays)
                            sink = P.Sink(run.partial)
                        P.write_batch(sink, b, arrays)  # rewriting a batch stores the same bytes again
                    best[side] = min(best[side], time.perf_counter() - start)
            forward += best["forward"]
            stored += best["stored"]
    sink.close()
    return forward, stored


def store_only(teacher: Teacher, samples: list[IQASample], batches: list[dict], views: int, folder: Path) -> float:
    """Seconds the cache's own work takes on precomputed teacher outputs, file creation included."""
    run = _run(teacher, samples, views, len(batches[0]["rows"]), folder / "store.h5.partial")
    with torch.no_grad():
        outs = [teacher(b["images"]) for b in batches]
    start = time.perf_counter()
    sink = None
    for out, b in zip(outs, batches, strict=True):
        arrays = run.arrays(out, b)
        if sink is None:
            P.create(run.partial, run.fingerprints, run.meta(arrays), arrays)
            sink = P.Sink(run.partial)
        P.write_batch(sink, b, arrays)
    sink.close()
    return time.perf_counter() - start


def end_to_end(teacher: Teacher, samples: list[IQASample], views: int, batch: int, folder: Path,
               first_bare: bool) -> tuple[float, float]:
    """(decode + views + forward, build_cache) seconds for the same views."""
    plan = CachePlan(len(samples), views, batch)
    blocks = BlockViews(samples, spec(views, batch), plan, plan.blocks())
    path = folder / "e2e.h5"

    def run_bare() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for j in range(len(blocks)):
                teacher(blocks[j]["images"])
        return time.perf_counter() - start

    def run_cached() -> float:
        if path.exists():
            path.unlink()
        start = time.perf_counter()
        build_cache(spec(views, batch), teacher, samples, path, progress=False)
        return time.perf_counter() - start

    if first_bare:
        bare = run_bare()
        return bare, run_cached()
    cached = run_cached()
    return run_bare(), cached


def bench(kind: str, samples: list[IQASample], views: int, batch: int, repeats: int, folder: Path) -> None:
    teacher = make_teacher(kind).eval()
    n = len(samples) * views
    batches = render_batches(samples, views, batch)
    with torch.no_grad():  # warm-up: first calls allocate and pick kernels
        teacher(batches[0]["images"])
    store_only(teacher, samples, batches, views, folder)  # warm-up: HDF5 and numpy first-call costs
    fwd, store = in_memory(teacher, samples, batches, views, folder, repeats)
    own = min(store_only(teacher, samples, batches, views, folder) for _ in range(repeats))
    e2e = [end_to_end(teacher, samples, views, batch, folder, first_bare=r % 2 == 0) for r in range(repeats)]
    bare, cached = (min(x) for x in zip(*e2e, strict=True))
    params = count_parameters(teacher)
    print(f"\nteacher {kind} ({params / 1e6:.2f} M parameters), {n} views of {VIEW_SIZE} px, batch {batch}, "
          f"quality_map 8×16×16 fp16 (4096 B/view), best of {repeats}")
    print(f"  forward alone            {fwd:7.3f} s  ({1000 * fwd / n:6.2f} ms/view)")
    print(f"  store alone              {own:7.3f} s  ({1000 * own / n:6.2f} ms/view: cast, checks, HDF5 writes, 2 flushes/batch)")
    print(f"  forward + store          {store:7.3f} s  ratio {store / fwd:.3f} measured, {(fwd + own) / fwd:.3f} from the "
          "parts  (goal <= 1.05)")
    print(f"  end to end               {cached:7.3f} s  build_cache vs {bare:.3f} s decode+views+forward: ratio {cached / bare:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher", choices=("conv", "dpiqa", "both"), default="both")
    parser.add_argument("--dpiqa-images", type=int, default=24, help="images for the (slow) DP-IQA teacher")
    args = parser.parse_args()
    import os

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load} "
          "(other processes only add time: each figure is the best of --repeats runs)")
    with tempfile.TemporaryDirectory(prefix="kdiqa-cache-bench-") as tmp:
        folder = Path(tmp)
        samples = make_images(folder / "images", args.images)
        if args.teacher in ("conv", "both"):
            bench("conv", samples, args.views, args.batch, args.repeats, folder)
        if args.teacher in ("dpiqa", "both"):
            bench("dpiqa", samples[: args.dpiqa_images], args.views, min(args.batch, 8), args.repeats, folder)


if __name__ == "__main__":
    main()
