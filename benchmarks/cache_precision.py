"""Benchmark: what caching with the teacher in bf16 / fp16 (``cache.precision``) does to its targets, and its time.

    .venv/bin/python benchmarks/cache_precision.py [--views 600] [--batch 200] [--time-batch 50] [--rounds 5] [--threads 1]

Setting: the quickstart's teacher (the shipped tiny DP-IQA, ``teachers/dpiqa/weights/tiny-quality``) on
``--views`` evaluation views (64 px) spread evenly over the quickstart's training images and pool
(``data/mini``, built by the recipe if absent), on the CPU. Each precision runs the teacher exactly as
``kdiqa cache`` does (:func:`kdiqa.cache.precision.teacher_autocast` around the forward, targets through
:func:`kdiqa.cache.teacher_targets`); fp32 is the reference. Printed per precision:

- score: max and mean |Δ| against fp32, the mean |Δ| as a share of the fp32 scores' standard deviation,
  and the SRCC between its scores and fp32's (1 = the same ranking);
- quality_map (8×16×16): max and mean |Δ| against fp32, and the mean |Δ| as a share of the mean |value|;
- for scale, the error the cache's storage adds to fp32 targets anyway: float16 (the default
  ``cache.dtype``) and int8 (``benchmarks/cache_compact.py``) round-trips of the fp32 quality maps;
- time: one batch of ``--time-batch`` views per call, timed in interleaved rounds (order reversed every
  round, one warm-up call each), median seconds per batch and the ratio to fp32.

fp16 autocast on a CPU is supported by torch but not accelerated on most CPUs (it dominates this
script's time: about 4 of its 5 minutes); the point of both half precisions is a GPU, where they cost
about half. Goal (issue 17): the effect on the targets
measured, so a user can choose knowingly; no accuracy goal.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.cache import teacher_targets  # noqa: E402
from kdiqa.cache.precision import teacher_autocast  # noqa: E402
from kdiqa.cache.quantize import dequantize, quantize  # noqa: E402
from kdiqa.config import load_recipe  # noqa: E402
from kdiqa.data.datamodule import make_sampler  # noqa: E402
from kdiqa.data.images import load_image  # noqa: E402
from kdiqa.measure import machine_context, time_interleaved  # noqa: E402
from kdiqa.run import RunDir  # noqa: E402
from kdiqa.stages.data import data_module  # noqa: E402
from kdiqa.teachers.base import Teacher  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")
FEATURE = "quality_map"


def views(recipe, count: int) -> torch.Tensor:
    """``count`` evaluation views spread evenly over the recipe's distillation images (training + pool)."""
    dm = data_module(recipe)
    dm.setup()
    samples = dm.distill_samples()
    picked = np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int)
    sampler = make_sampler(recipe.views, train=False)
    return torch.stack([sampler.apply(load_image(samples[i].path), sampler.eval_params()) for i in picked])


def targets(teacher: Teacher, batches: list[torch.Tensor], precision: str, pool: dict) -> dict[str, np.ndarray]:
    """The teacher's score and quality map for every view, computed as ``kdiqa cache`` computes them."""
    out: dict[str, list[np.ndarray]] = {"score": [], FEATURE: []}
    with torch.no_grad(), teacher_autocast(torch.device("cpu"), precision):
        for batch in batches:
            for name, value in teacher_targets(teacher(batch), [FEATURE], pool, "cache.features").items():
                if name in out:
                    out[name].append(value.numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--views", type=int, default=600)
    parser.add_argument("--batch", type=int, default=200, help="views per forward (the quickstart's cache.batch_size)")
    parser.add_argument("--time-batch", type=int, default=50, help="views per timed forward")
    parser.add_argument("--rounds", type=int, default=5, help="timed batches per precision (interleaved)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the quickstart recipe's)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"$ .venv/bin/python benchmarks/cache_precision.py {shlex.join(sys.argv[1:])}")
    print("# " + "; ".join(f"{k}: {v}" for k, v in machine_context().items()), flush=True)

    recipe = load_recipe(args.recipe, [f"data.root={REPO / 'data' / 'mini'}", *args.overrides])
    folder = RunDir.of(recipe).teacher
    teacher = Teacher.from_pretrained(folder).eval()
    images = views(recipe, args.views)
    batches = list(images.split(args.batch))
    print(f"# teacher {folder.name} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.2f} M parameters), "
          f"{len(images)} views of {recipe.views.size} px, batches of {args.batch}, {args.threads} thread(s)", flush=True)

    results = {p: targets(teacher, batches, p, dict(recipe.cache.pool)) for p in PRECISIONS}
    ref = results["fp32"]
    score_std = float(ref["score"].std())
    map_mean = float(np.abs(ref[FEATURE]).mean())
    fmap = ref[FEATURE]
    print(f"\nfp32 reference: score mean {ref['score'].mean():.4f}, std {score_std:.4f}; "
          f"{FEATURE} {'×'.join(map(str, fmap.shape[1:]))}, mean |value| {map_mean:.4f}, max {np.abs(fmap).max():.4f}")
    print(f"{'precision':<11}{'score max|Δ|':>13}{'mean|Δ|':>10}{'/ std':>8}{'SRCC vs fp32':>14}"
          f"{f'{FEATURE} max|Δ|':>20}{'mean|Δ|':>10}{'/ mean|x|':>11}")
    rows = {}
    for p in PRECISIONS[1:]:
        ds, dm_ = np.abs(results[p]["score"] - ref["score"]), np.abs(results[p][FEATURE] - fmap)
        srcc = spearmanr(results[p]["score"], ref["score"]).statistic
        rows[p] = (ds.max(), ds.mean(), dm_.max(), dm_.mean())
        print(f"{p:<11}{ds.max():>13.2e}{ds.mean():>10.2e}{ds.mean() / score_std:>8.2%}{srcc:>14.6f}"
              f"{dm_.max():>20.2e}{dm_.mean():>10.2e}{dm_.mean() / map_mean:>11.2%}")
    # for scale: what storing fp32 targets costs anyway
    stored16 = np.abs(fmap.astype(np.float16).astype(np.float32) - fmap)
    codes, params = quantize(fmap)
    stored8 = np.abs(np.stack([dequantize(codes[i], params[i]) for i in range(len(fmap))]) - fmap)
    for name, d in (("(float16 storage of fp32 maps)", stored16), ("(int8 storage of fp32 maps)", stored8)):
        print(f"{name:<55}{d.max():>20.2e}{d.mean():>10.2e}{d.mean() / map_mean:>11.2%}")

    timed = images[: args.time_batch]
    calls = {}
    for p in PRECISIONS:
        def call(p: str = p) -> None:
            with torch.no_grad(), teacher_autocast(torch.device("cpu"), p):
                teacher(timed)
        calls[p] = call
    times = time_interleaved(calls, dict.fromkeys(PRECISIONS, args.rounds), dict.fromkeys(PRECISIONS, 1))
    med = {p: statistics.median(t) for p, t in times.items()}
    print(f"\ntime per batch of {len(timed)} views (median of {args.rounds} interleaved rounds)")
    for p in PRECISIONS:
        print(f"  {p:<6}{med[p]:8.3f} s  ({len(timed) / med[p]:7.1f} views/s)  {med[p] / med['fp32']:5.2f}× fp32")
    b = rows["bf16"]
    print(f"\nheadline: bf16 teacher on this CPU: score max|Δ| {b[0]:.2e} (mean {b[1]:.2e}), {FEATURE} max|Δ| {b[2]:.2e} "
          f"(mean {b[3]:.2e}) vs fp32; time {med['bf16'] / med['fp32']:.2f}× fp32 (fp16: {med['fp16'] / med['fp32']:.2f}×). "
          "Goal: measured (no threshold) — met")


if __name__ == "__main__":
    main()
