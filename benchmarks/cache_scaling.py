"""Benchmark: does the feature cache scale? Write and random-order read at 1k, 10k and 100k views.

    .venv/bin/python benchmarks/cache_scaling.py [--sizes 1000,10000,100000] [--rounds 3] [--views 10]

Every figure goes through the real code path: ``build_cache`` writes the cache (views rendered from
image files, a synthetic teacher's 8×16×16 float16 map = 4 KiB per view, HDF5 rows, finish) and
``CachedViews`` reads it back.

1. Scaling. Every size in its own fresh process (so its peak memory is its own); the table shows medians.
   - write: ``build_cache`` seconds per view, all of it (fingerprints, file creation, rendering, the
     teacher, writes, finishing), and the process's peak RSS while it runs. The sizes are written at
     the same time, side by side (the smaller ones again and again until the largest is done), so
     that load from other processes hits them alike; ``--rounds`` times;
   - read: ``CachedViews[i]`` of random items (image decoded, view replayed, targets read: what a
     DataLoader worker does), one reader per size in one process, blocks of 200 items, the sizes
     interleaved block by block; and, alone in a fresh process per size, the peak RSS from opening
     the reader to the end of one epoch in random order.
   Goals: per-view cost constant within 20 % (largest / smallest per-view median ≤ 1.2) and peak
   memory flat (peak RSS at the largest size / at the smallest ≤ 1.2).
2. The targets alone, and the reader's HDF5 chunk cache (``rdcc_nbytes``, ``rdcc_nslots``, set per
   feature dataset by ``kdiqa.cache.handles.open_dataset``). One process opens every cache once per
   setting and reads each in its own random order, epoch after epoch, in blocks of 200 rows; the
   blocks of all (cache, setting) pairs are interleaved, so load from other processes hits all alike;
   the table shows the median µs per row over the blocks of epoch 1 (nothing read before: no reuse)
   and of the later epochs (a chunk cache that holds the whole dataset now serves every read). The
   caches: each size as written above; the largest also written as 2 shards and merged (what
   ``torchrun`` caching makes: virtual datasets); and, to show where a random read's cost grows with
   the size, the largest copied into HDF5's 1.10 file format, whose chunk index is implicit (no
   B-tree lookup). kdiqa does not write that format: a writer killed mid-run leaves such a file
   marked "open for write", and it then refuses to open, so an interrupted cache could not resume.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGE_SIDE = 16  # tiny PNGs: the benchmark is about the cache, not about decoding photographs
VIEW_SIDE = 8
MAP_SHAPE = (8, 16, 16)  # float16: 4 KiB per view
BATCH = 64
# (label, rdcc_nbytes, rdcc_nslots) tried for the reader; HDF5's default is 1 MiB, 521 slots
CHUNK_CACHES = [("off", 0, 1), ("1 MiB (HDF5 default)", 1 << 20, 521), ("16 MiB", 16 << 20, 40_009),
                ("64 MiB", 64 << 20, 160_001)]
BLOCK = 200  # rows (items) per timed block
GOAL = 1.2


# ----------------------------------------------------------------------------- the worker side
def _status(key: str) -> int:
    """A /proc/self/status figure, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) here, so a phase's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def _setup(folder: Path, n_views: int, views: int) -> tuple[Any, list, Any]:
    import torch
    from torch import nn

    from kdiqa.cache import CacheSpec
    from kdiqa.data.sample import IQASample
    from kdiqa.data.views import ViewSampler
    from kdiqa.teachers.base import Teacher, TeacherOutput

    torch.set_num_threads(1)

    class MapTeacher(Teacher):
        """A synthetic teacher: its map is the view resized to 16×16 and stacked, as cheap as can be."""

        name = "bench-map"

        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, images: torch.Tensor) -> TeacherOutput:
            small = nn.functional.interpolate(images, size=MAP_SHAPE[1:], mode="nearest") * self.scale
            qmap = torch.cat([small, 1 - small, small[:, :2]], 1)
            return TeacherOutput(score=images.mean((1, 2, 3)), features={"quality_map": qmap})

    samples = [IQASample(str(folder / "images" / f"{i:06d}.png"), mos=(i % 97) / 96, mos_raw=0.0, split="train")
               for i in range(n_views // views)]
    sampler = ViewSampler(VIEW_SIDE, train=True, scale=(0.25, 1.0), ratio=(0.75, 1.33), flip=True)
    spec = CacheSpec(sampler, views_per_image=views, features=["quality_map"], batch_size=BATCH)
    return spec, samples, MapTeacher()


def cache_path(folder: Path, n: int, kind: str = "") -> Path:
    return folder / f"cache-{n}{'-' + kind if kind else ''}.h5"


def worker_write(folder: Path, n: int, views: int, shards: int = 1, race: str = "") -> dict[str, Any]:
    """Seconds per view of whole writes from scratch, and the process's peak RSS.

    ``race``: a name shared by the processes of one round, which write their sizes at the same time
    (so that load from other processes hits every size alike): each waits until all have started,
    the largest writes once, and the smaller ones write again and again until it is done; the figure
    is their median write.
    """
    from kdiqa.cache import build_cache, merge_shards

    spec, samples, teacher = _setup(folder, n, views)
    path = cache_path(folder, n, "merged" if shards > 1 else "")
    rss = _status("VmRSS")
    lead = not race or n == max(int(name) for name in race.split("-")[1:])
    if race:  # a start line: every process of the round has imported and set up
        (folder / f"{race}.ready-{n}").touch()
        while len(list(folder.glob(f"{race}.ready-*"))) < len(race.split("-")) - 1:
            time.sleep(0.01)
    _reset_peak()
    seconds = []
    while not seconds or (not lead and not (folder / f"{race}.done").exists()):
        for old in path.parent.glob(path.name + "*"):
            old.unlink()
        start = time.perf_counter()
        for i in range(shards):
            build_cache(spec, teacher, samples, path, shard=(i, shards) if shards > 1 else None, progress=False)
        if shards > 1:
            merge_shards(path, progress=False)
        seconds.append(time.perf_counter() - start)
    if race and lead:
        (folder / f"{race}.done").touch()
    return {"seconds": statistics.median(seconds), "writes": len(seconds), "peak": _status("VmHWM"), "rss_before": rss,
            "bytes": path.stat().st_size}


def worker_read(folder: Path, n: int, views: int) -> dict[str, Any]:
    """Peak RSS of opening the reader and reading one epoch in random order; seconds to open it."""
    from kdiqa.cache import CachedViews

    spec, samples, _ = _setup(folder, n, views)
    rss = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    data = CachedViews(cache_path(folder, n), samples, spec.sampler)
    opened = time.perf_counter() - start
    for i in np.random.default_rng(0).permutation(len(data)):
        data[int(i)]
    data.close()
    return {"open": opened, "peak": _status("VmHWM"), "rss_before": rss}


def worker_items(folder: Path, sizes: list[int], views: int, blocks: int) -> dict[str, float]:
    """Median seconds per ``CachedViews[i]`` at each size: one reader per size in this process, blocks of
    random items, the sizes interleaved block by block (the order reversed every round)."""
    from kdiqa.cache import CachedViews

    readers = {}
    for n in sizes:
        spec, samples, _ = _setup(folder, n, views)
        readers[n] = CachedViews(cache_path(folder, n), samples, spec.sampler)
    rng = np.random.default_rng(2)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for r in range(blocks + 1):
        for n in sizes if r % 2 == 0 else sizes[::-1]:
            data = readers[n]
            items = rng.integers(0, len(data), BLOCK)
            start = time.perf_counter()
            for i in items:
                data[int(i)]
            if r:  # the first round warms up (first calls of PIL, torch, h5py)
                times[n].append((time.perf_counter() - start) / BLOCK)
    for data in readers.values():
        data.close()
    return {str(n): statistics.median(t) for n, t in times.items()}


def worker_v110_copy(folder: Path, n: int) -> dict[str, Any]:
    """The feature dataset of the ``n``-view cache copied into HDF5's 1.10 format (implicit chunk index)."""
    import h5py

    from kdiqa.cache import layout as L

    key = L.feature_dataset("quality_map")
    with h5py.File(cache_path(folder, n), "r") as src, h5py.File(cache_path(folder, n, "v110"), "w", libver=("v110", "latest")) as dst:
        ds = src[key]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        out = dst.create_dataset(key, shape=ds.shape, dtype=ds.dtype, chunks=ds.chunks, dcpl=dcpl, fill_time="never")
        for a in range(0, n, 4096):
            out[a : a + 4096] = ds[a : a + 4096]
    return {}


def worker_chunks(folder: Path, caches: list[list[Any]], rounds_of_largest: int) -> dict[str, Any]:
    """µs per row read for each (cache, chunk-cache setting), per block, split into epoch 1 and later."""
    from kdiqa.cache import layout as L
    from kdiqa.cache.handles import open_dataset
    from kdiqa.cache.status import open_readonly

    key = L.feature_dataset("quality_map")
    files = {name: open_readonly(folder / file) for name, file in caches}
    streams = []
    for name, f in files.items():
        for label, nbytes, nslots in CHUNK_CACHES:
            ds = open_dataset(f, key, (nbytes, nslots))
            streams.append({"name": name, "setting": label, "ds": ds, "n": ds.shape[0], "order": np.empty(0, int),
                            "pos": 0, "epoch": -1, "times": ([], [])})
    rng = np.random.default_rng(1)
    largest = max(s["n"] for s in streams)
    for r in range(rounds_of_largest * largest // BLOCK):
        for s in streams if r % 2 == 0 else streams[::-1]:
            if s["pos"] >= len(s["order"]):
                s["order"], s["pos"], s["epoch"] = rng.permutation(s["n"]), 0, s["epoch"] + 1
            rows = s["order"][s["pos"] : s["pos"] + BLOCK]
            s["pos"] += BLOCK
            ds = s["ds"]
            start = time.perf_counter()
            for row in rows:
                ds[int(row)]
            s["times"][min(s["epoch"], 1)].append((time.perf_counter() - start) / len(rows))
    result: dict[str, Any] = {}
    for s in streams:
        result.setdefault(s["name"], {})[s["setting"]] = [statistics.median(t) if t else None for t in s["times"]]
    for s in streams:
        s["ds"] = None
    for f in files.values():
        f.close()
    return result


# ----------------------------------------------------------------------------- the parent side
def make_images(folder: Path, count: int) -> None:
    from PIL import Image

    root = folder / "images"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i:06d}.png", compress_level=1)


def run_workers(calls: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Run each call in its own fresh process, all at once; their results, in order."""
    procs = []
    for args in calls:
        command = [sys.executable, __file__, "--worker", json.dumps([str(a) if isinstance(a, Path) else a for a in args])]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
    results = []
    for args, proc in zip(calls, procs, strict=True):
        out, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"worker {args[0]} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_worker(*args: Any) -> dict[str, Any]:
    return run_workers([args])[0]


def machine() -> str:
    import h5py
    import torch

    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; {cpu}, {os.cpu_count()} logical CPUs; load average {load}\n"
            f"# python {platform.python_version()}, torch {torch.__version__}, h5py {h5py.__version__}, "
            f"HDF5 {h5py.version.hdf5_version}; one process and one torch thread per measurement")


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def verdict(ratio: float) -> str:
    return f"{ratio:.2f} (goal <= {GOAL}): {'met' if ratio <= GOAL else 'NOT met'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="views per cache, comma-separated, ascending")
    parser.add_argument("--views", type=int, default=10, help="views per image (images = views / this)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--item-blocks", type=int, default=40, help=f"blocks of {BLOCK} items read per size")
    parser.add_argument("--chunk-epochs", type=int, default=2, help="epochs of the largest cache in the chunk-cache experiment")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = json.loads(args.worker)
        rest[0] = Path(rest[0])
        workers = {"write": worker_write, "read": worker_read, "items": worker_items, "chunks": worker_chunks,
                   "v110": worker_v110_copy}
        print(json.dumps(workers[kind](*rest)))
        return

    sizes = sorted(int(s) for s in args.sizes.split(","))
    if any(n % args.views for n in sizes):
        sys.exit(f"--sizes: each must be a multiple of --views ({args.views})")
    started = time.perf_counter()
    print(" ".join(["$ .venv/bin/python benchmarks/cache_scaling.py", *map(shlex.quote, sys.argv[1:])]))
    print(machine())
    print(f"# {args.views} views per image of {IMAGE_SIDE}x{IMAGE_SIDE} PNGs, {VIEW_SIDE} px views, quality_map "
          f"{'x'.join(map(str, MAP_SHAPE))} float16 (4096 B/view), batch {BATCH}; {args.rounds} interleaved rounds, medians")
    with tempfile.TemporaryDirectory(prefix="kdiqa-cache-scaling-") as tmp:
        folder = Path(tmp)
        make_images(folder, max(sizes) // args.views)
        results: dict[int, dict[str, list]] = {n: {} for n in sizes}
        for r in range(args.rounds):  # all sizes written at the same time, in one process each
            race = "race" + r * "r" + "".join(f"-{n}" for n in sizes)
            for n, measured in zip(sizes, run_workers([("write", folder, n, args.views, 1, race) for n in sizes]), strict=True):
                for key, value in measured.items():
                    results[n].setdefault(f"write_{key}", []).append(value)
        for n in sizes:  # a read's peak memory, each size alone in a fresh process
            for key, value in run_worker("read", folder, n, args.views).items():
                results[n][f"read_{key}"] = [value]
        items = run_worker("items", folder, sizes, args.views, args.item_blocks)
        for n in sizes:
            results[n]["read_items"] = [items[str(n)]]
        table(results, sizes, args.item_blocks)

        largest = max(sizes)
        run_worker("write", folder, largest, args.views, 2)
        run_worker("v110", folder, largest)
        caches = [[f"{n}", cache_path(folder, n).name] for n in sizes]
        caches += [[f"{largest} merged", cache_path(folder, largest, "merged").name],
                   [f"{largest} v1.10", cache_path(folder, largest, "v110").name]]
        chunk_table(run_worker("chunks", folder, caches, args.chunk_epochs), sizes, args.chunk_epochs)
    print(f"# took {time.perf_counter() - started:.0f} s")


def table(results: dict[int, dict[str, list]], sizes: list[int], item_blocks: int) -> None:
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    print(f"\n{'views':>8} {'write us/view':>14} {'write peak MiB':>15} {'read us/view':>13} {'read peak MiB':>14} "
          f"{'open ms':>8} {'file MiB':>9}")
    for n in sizes:
        m = med[n]
        print(f"{n:>8} {1e6 * m['write_seconds'] / n:>14.1f} {mib(m['write_peak']):>15} {1e6 * m['read_items']:>13.1f} "
              f"{mib(m['read_peak']):>14} {1e3 * m['read_open']:>8.1f} {mib(m['write_bytes']):>9}")
    writes = "/".join(str(sum(results[n]["write_writes"])) for n in sizes)
    print(f"# write: build_cache, whole, all sizes at the same time in one process each (the smaller ones again until the "
          f"largest is done: {writes} writes in all); peak = the process's peak RSS during the phase (before it, with torch, "
          f"h5py and kdiqa loaded: {mib(med[sizes[0]]['write_rss_before'])} MiB); read = CachedViews[i] of random items "
          f"(decode, view, targets), median over {item_blocks} blocks of {BLOCK} per size, sizes interleaved in one process; "
          "read peak = opening the reader and one epoch in random order, alone; open = CachedViews(...) itself")
    for label, per_view in (("write", [med[n]["write_seconds"] / n for n in sizes]), ("read", [med[n]["read_items"] for n in sizes])):
        print(f"goal {label} per-view cost constant: max/min over sizes = {verdict(max(per_view) / min(per_view))}")
    for label, key in (("write", "write_peak"), ("read", "read_peak")):
        print(f"goal {label} peak memory flat: {sizes[-1]} / {sizes[0]} views = {verdict(med[sizes[-1]][key] / med[sizes[0]][key])}")


def chunk_table(result: dict[str, dict[str, list]], sizes: list[int], epochs: int) -> None:
    from kdiqa.cache.reader import READ_CHUNK_CACHE

    print(f"\nthe targets alone, by the reader's chunk cache: median us per row over blocks of {BLOCK} random rows, "
          f"epoch 1 / later epochs ({epochs} epochs of the largest cache; smaller ones loop), all blocks interleaved")
    names = list(result)
    print(f"{'rdcc_nbytes, rdcc_nslots':<34}" + "".join(f"{name:>17}" for name in names))
    for label, nbytes, nslots in CHUNK_CACHES:
        cells = "".join(f"{1e6 * result[name][label][0]:>9.1f} /{1e6 * result[name][label][1]:>6.1f}" for name in names)
        mark = "  <- the reader's" if (nbytes, nslots) == tuple(READ_CHUNK_CACHE) else ""
        print(f"{f'{label} {nbytes}, {nslots}':<34}{cells}{mark}")
    print("# memory: a chunk cache holds up to rdcc_nbytes per feature dataset per reading process (DataLoader worker)")
    for epoch, when in ((0, "epoch 1"), (1, "later epochs")):
        best = {name: min(result[name], key=lambda k, name=name: result[name][k][epoch]) for name in names}
        print(f"fastest, {when}: " + "; ".join(f"{name}: {label}" for name, label in best.items()))
    reader = next(label for label, nbytes, nslots in CHUNK_CACHES if (nbytes, nslots) == tuple(READ_CHUNK_CACHE))
    per_view = [result[str(n)][reader][0] for n in sizes]
    print(f"goal targets-only read per-view cost constant (epoch 1, reader's setting): max/min over sizes = "
          f"{verdict(max(per_view) / min(per_view))}")
    btree, implicit = result[str(sizes[-1])][reader][0], result[f"{sizes[-1]} v1.10"][reader][0]
    print(f"# at {sizes[-1]} views a row costs {btree / implicit:.2f}x in kdiqa's file (v1 B-tree chunk index) what it "
          "costs with the 1.10 format's implicit index")


if __name__ == "__main__":
    main()
