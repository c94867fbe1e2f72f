"""Benchmark: compact caches — bytes per view of each ``cache.dtype`` × compression, and the student from each.

    .venv/bin/python benchmarks/cache_compact.py [--out runs/bench-cache-compact] [--dtypes float32 float16 int8]

Setting: the quickstart recipe (the shipped tiny DP-IQA teacher, 800 labelled crops + a pool of 6400,
``data/mini``, built by the recipe if absent). For each dtype, in its own run folder under ``--out``
(``runs/quickstart`` is never touched): ``kdiqa cache`` with ``cache.dtype=<dtype>`` (the quickstart's
cache otherwise), then the quickstart's distill stage with the same seed → the KD student's test SRCC.

Bytes: ``data`` is what one view's row holds (every dataset: the 8×16×16 quality map, and with int8
its scale and zero point per channel, plus the index, view parameters, MOS, score and done flag:
69 bytes); ``map`` counts the feature map alone (with int8's scales and zero points). ``on disk`` is
the file's size over its views, for each compression: the finished cache copied into its compressed
form by the very function ``kdiqa cache`` finishes a compressed cache with (``cache.compression`` lzf
or gzip: level 4, byte-shuffle filter), and for comparison gzip at levels 1 and 9 and both codecs
without the shuffle filter. The int8 round-trip error against the float32 cache's maps is checked
against its stated bound, half a step per (view, channel) plane.

Goal (issue 17): int8 ≤ ½ the bytes of float16 per view, with its student within 0.005 test SRCC of the
float16 cache's student (same seed). ``--seeds`` adds students of other seeds from the same caches
(``<dtype>/seed-<s>/``), since one seed's test SRCC on the quickstart's three test photographs moves by
several hundredths with any change of the targets (the float16 − float32 line shows how much). Each
finished dtype leaves ``compact_row.json`` in its folder (each extra seed ``student_row.json``), and a rerun
reuses them (delete the folder to measure again). About 10 minutes on 2 cores for one seed, 2–3 more per
extra seed and dtype.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.cache import cache_info  # noqa: E402
from kdiqa.cache import layout as L  # noqa: E402
from kdiqa.cache import partial as P  # noqa: E402
from kdiqa.cache.quantize import channels  # noqa: E402
from kdiqa.config import load_recipe  # noqa: E402
from kdiqa.console import setup_console  # noqa: E402
from kdiqa.measure import machine_context  # noqa: E402
from kdiqa.run import prepare_run  # noqa: E402
from kdiqa.stages import stage_cache, stage_distill  # noqa: E402

FEATURE = "quality_map"
# (label, cache.compression, gzip level, shuffle); the first three are what cache.compression chooses
VARIANTS = [("none", "none", None, False), ("lzf", "lzf", None, True), ("gzip", "gzip", 4, True),
            ("lzf, no shuffle", "lzf", None, False), ("gzip 4, no shuffle", "gzip", 4, False),
            ("gzip 1", "gzip", 1, True), ("gzip 9", "gzip", 9, True)]


def compressed_sizes(cache: Path, views: int) -> dict[str, dict[str, float]]:
    """On-disk bytes per view of ``cache`` copied into each compressed form, and seconds to write it."""
    sizes: dict[str, dict[str, float]] = {"none": {"bytes": cache.stat().st_size / views, "seconds": 0.0}}
    saved = P.GZIP_LEVEL, P.SHUFFLE
    try:
        for label, codec, level, shuffle in VARIANTS[1:]:
            P.GZIP_LEVEL, P.SHUFFLE = level or saved[0], shuffle
            target = cache.with_name(f"compressed-{label.replace(' ', '').replace(',', '-')}.h5")
            started = time.perf_counter()
            P._repack(cache, target, codec)  # what build_cache does to finish a compressed cache
            sizes[label] = {"bytes": target.stat().st_size / views, "seconds": time.perf_counter() - started}
            target.unlink()
    finally:
        P.GZIP_LEVEL, P.SHUFFLE = saved
    return sizes


def int8_error(int8: Path, float32: Path) -> dict[str, float]:
    """Worst |x − x̂| of the int8 cache's maps against the float32 cache's, absolute and in half steps."""
    with h5py.File(int8, "r") as f, h5py.File(float32, "r") as g:
        codes, params, exact = f[L.feature_dataset(FEATURE)][...], f[L.quant_dataset(FEATURE)][...], g[L.feature_dataset(FEATURE)][...]
    n = len(exact)
    planes = exact.reshape(n, channels(exact.shape[1:]), -1).astype(np.float64)
    restored = params[:, 1, :, None].astype(np.float32) + codes.reshape(planes.shape).astype(np.float32) * params[:, 0, :, None]
    error = np.abs(restored - planes)
    half = (planes.max(axis=2) - planes.min(axis=2))[..., None] / 255 / 2
    return {"max_abs": float(error.max()), "mean_abs": float(error.mean()),
            "max_in_half_steps": float((error / np.where(half > 0, half, np.inf)).max())}


def run_dtype(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    """The dtype's cache and its bytes, and the student of the recipe's seed (all in ``--out/<dtype>``)."""
    folder = Path(args.out) / dtype
    done = folder / "compact_row.json"
    if done.is_file():
        print(f"{dtype}: done earlier ({done}; delete {folder} to measure again)", flush=True)
        return json.loads(done.read_text())
    recipe = load_recipe(args.recipe, [*base_overrides(args, dtype), f"out={folder}"])
    run = prepare_run(recipe)
    started = time.perf_counter()
    stage_cache(recipe, run)
    cache_seconds = time.perf_counter() - started
    info = cache_info(run.cache)
    views = info["views"]
    maps = [name for name in info["datasets"] if name.endswith("/" + FEATURE)]
    row = {
        "dtype": dtype, "seed": recipe.seed, "views": views, "cache_seconds": cache_seconds, "cache": str(run.cache.resolve()),
        "data_bytes": info["bytes_per_view"], "map_bytes": sum(info["datasets"][m]["bytes_per_view"] for m in maps),
        "on_disk": compressed_sizes(run.cache, views),
    }
    started = time.perf_counter()
    row["test"] = stage_distill(recipe, run)["test"]
    row["distill_seconds"] = time.perf_counter() - started
    done.write_text(json.dumps(row, indent=2) + "\n")
    print(f"{dtype}: {row['data_bytes']} B/view, seed {recipe.seed} student test SRCC {row['test']['srcc']:.4f} "
          f"(cache {cache_seconds:.0f} s, distill {row['distill_seconds']:.0f} s)", flush=True)
    return row


def run_seed(args: argparse.Namespace, dtype: str, seed: int, cache: str) -> dict[str, Any]:
    """Another seed's student from the same cache (a reader accepts the cache's own view seed)."""
    folder = Path(args.out) / dtype / f"seed-{seed}"
    done = folder / "student_row.json"
    if done.is_file():
        return json.loads(done.read_text())
    recipe = load_recipe(args.recipe, [*base_overrides(args, dtype), f"seed={seed}", f"out={folder}", f"cache.path={cache}"])
    run = prepare_run(recipe)
    started = time.perf_counter()
    row = {"dtype": dtype, "seed": seed, "test": stage_distill(recipe, run)["test"], "distill_seconds": time.perf_counter() - started}
    done.write_text(json.dumps(row, indent=2) + "\n")
    print(f"{dtype}: seed {seed} student test SRCC {row['test']['srcc']:.4f} (distill {row['distill_seconds']:.0f} s)", flush=True)
    return row


def base_overrides(args: argparse.Namespace, dtype: str) -> list[str]:
    return [f"data.root={REPO / 'data' / 'mini'}", *args.overrides, f"cache.dtype={dtype}", "trainer.progress_bar=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--out", default="runs/bench-cache-compact")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "int8"])
    parser.add_argument("--seeds", type=int, nargs="+", help="student seeds (default: the recipe's); the cache is the same")
    parser.add_argument("overrides", nargs="*", help="recipe overrides (every dtype gets them)")
    args = parser.parse_args()
    setup_console()  # the stages' Lightning chatter stays out of the benchmark's output, as in `kdiqa`
    print(f"$ .venv/bin/python benchmarks/cache_compact.py {shlex.join(sys.argv[1:])}")
    if Path(args.out).resolve() == (REPO / "runs" / "quickstart").resolve():
        raise SystemExit("--out: not the quickstart's own run folder")
    threads = load_recipe(args.recipe, base_overrides(args, "float16")).threads
    if threads is not None:
        torch.set_num_threads(threads)  # as prepare_run sets it, so the line below says what the stages use
    print("# " + "; ".join(f"{k}: {v}" for k, v in machine_context().items()), flush=True)

    rows = {dtype: run_dtype(args, dtype) for dtype in args.dtypes}
    seeds = args.seeds or [next(iter(rows.values()))["seed"]]
    srcc: dict[str, dict[int, float]] = {}
    for dtype, row in rows.items():
        srcc[dtype] = {seed: (row["test"] if seed == row["seed"] else run_seed(args, dtype, seed, row["cache"])["test"])["srcc"]
                       for seed in seeds}

    print(f"\nquickstart cache ({next(iter(rows.values()))['views']} views, {FEATURE} 8×16×16); bytes per view; "
          f"student = quickstart distill stage, test SRCC per seed {seeds}")
    labels = [v[0] for v in VARIANTS]
    print(f"{'dtype':<9}{'map':>6}{'data':>7}" + "".join(f"{label:>20}" for label in labels) + "   test SRCC")
    for dtype, row in rows.items():
        cells = "".join(f"{row['on_disk'][label]['bytes']:>20.0f}" for label in labels)
        scores = " ".join(f"{srcc[dtype][seed]:.4f}" for seed in seeds)
        median = f" (median {statistics.median(srcc[dtype].values()):.4f})" if len(seeds) > 1 else ""
        print(f"{dtype:<9}{row['map_bytes']:>6}{row['data_bytes']:>7}{cells}   {scores}{median}")
    print("(on disk: file bytes / views; 'lzf' and 'gzip' are what cache.compression writes: shuffle filter, gzip level 4)")
    seconds = {dtype: {k: round(v["seconds"], 2) for k, v in row["on_disk"].items() if k != "none"} for dtype, row in rows.items()}
    print(f"seconds to write the compressed copy: {json.dumps(seconds)}")

    if {"float32", "int8"} <= set(rows):
        err = int8_error(Path(rows["int8"]["cache"]), Path(rows["float32"]["cache"]))
        print(f"int8 maps vs float32 maps: max |Δ| {err['max_abs']:.2e}, mean |Δ| {err['mean_abs']:.2e}; "
              f"worst error = {err['max_in_half_steps']:.4f} half-steps (bound: 1, plus float32 rounding)")
    if {"float16", "int8"} <= set(rows):
        a, b = rows["int8"], rows["float16"]
        data, fmap = a["data_bytes"] / b["data_bytes"], a["map_bytes"] / b["map_bytes"]
        gz = a["on_disk"]["gzip"]["bytes"] / b["on_disk"]["gzip"]["bytes"]

        def deltas(x: str, y: str) -> str:
            d = [srcc[x][seed] - srcc[y][seed] for seed in seeds]
            return " ".join(f"{v:+.4f}" for v in d) + (f" (median {statistics.median(d):+.4f})" if len(d) > 1 else "")

        if "float32" in rows:
            print(f"float16 − float32 cache student, same seed: ΔSRCC {deltas('float16', 'float32')} "
                  "(what float16 rounding of the targets alone does to this student: the noise floor of the comparison)")
        dsrcc = statistics.median(srcc["int8"][seed] - srcc["float16"][seed] for seed in seeds)
        print(f"goal int8 ≤ ½ the bytes of float16: {data:.3f}× per view (map alone {fmap:.3f}×, gzip on disk {gz:.3f}×) — "
              f"{'met' if data <= 0.5 else 'not met'}")
        print(f"goal int8 student within 0.005 test SRCC of the float16 student (same seed): ΔSRCC {deltas('int8', 'float16')} — "
              f"{'met' if abs(dsrcc) <= 0.005 else 'not met'}")


if __name__ == "__main__":
    main()
