"""Benchmark: ``kdiqa predict`` over a folder of full-size JPEGs, against the decode-and-resize-only limit.

    .venv/bin/python benchmarks/predict_folder.py [--images 2000] [--rounds 3] [--small 1000] [--big 10000]
        [--model runs/quickstart/students/kd] [--workers N] [--folder /tmp/kdiqa-predict-bench]

One run measures, side by side:

1. Throughput: ``--images`` JPEGs at 1024×768 (random crops of the packaged scikit-image photographs,
   quality 90, made once under ``--folder``) are (a) only decoded and resized, by the very loader
   ``kdiqa predict`` uses (same workers, batches and draft setting, no model): the limit; (b) scored
   by the ``kdiqa predict`` command itself (in this process: interpreter start-up is item 3), with and
   without JPEG draft decoding; (c) the model alone on ready views, to show what the CPU allows when
   decoding and scoring share its cores. Interleaved rounds (kdiqa.measure.time_interleaved), medians.
2. Fidelity: max and mean |Δscore| of draft decoding vs full decoding over the same images (and for a
   draft down to 1× the input, which kdiqa does not use, to show why its margin is 2×).
3. Start-up: seconds from launching ``kdiqa predict`` to its first score on stdout (a fresh process each
   time, median of ``--startup-repeats``), for the saved student folder and its ONNX export, next to
   ``python -c "import torch"`` as the floor, and the import of what ``kdiqa predict`` imported before
   (``kdiqa.cli.commands``: the stages, hence Lightning).
4. Memory: peak RSS of ``kdiqa predict`` (main process; its largest worker) over ``--small`` and
   ``--big`` images (the files reused cyclically through a CSV list).

Goals (issue 17): predict ≥ 0.8× the limit; first score ≤ 1.5 s; peak RSS flat from 1k to 10k images
(here: 10k within 10 % of 1k). Prints the command, machine, date, the tables and each goal met or not.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.cli.main import main as kdiqa_main  # noqa: E402
from kdiqa.data.mini.photographs import load_photographs  # noqa: E402
from kdiqa.data.views import ViewSampler  # noqa: E402
from kdiqa.measure import machine_context, time_interleaved  # noqa: E402
from kdiqa.predict import (  # noqa: E402
    DEFAULT_BATCH_SIZE,
    DRAFT_MARGIN,
    ImageViews,
    collate_views,
    default_workers,
    load_scorer,
    model_image_size,
    model_threads,
    view_loader,
)
from kdiqa.predictions import read_rows  # noqa: E402

WIDTH, HEIGHT, QUALITY = 1024, 768, 90
KDIQA = [sys.executable, "-m", "kdiqa.cli.main"]
# kdiqa predict in a fresh process, its peak RSS read from /proc (VmHWM: not ru_maxrss, which Linux carries
# over from the parent through fork and exec); the command's imports come before the clock starts
RSS_CODE = """
import re, sys, time
import kdiqa.cli.predict
from kdiqa.cli.main import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1), seconds)
sys.exit(code)
"""


def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs at 1024×768: a random 4:3 crop (half to all of the photograph) of each packaged
    photograph in turn, resized (bicubic), mirrored half the time, quality 90. Made once per folder."""
    marker = folder / "made.json"
    spec = {"n": n, "seed": seed, "size": [WIDTH, HEIGHT], "quality": QUALITY}
    paths = [folder / f"{i:05d}.jpg" for i in range(n)]
    if marker.is_file() and json.loads(marker.read_text()) == spec and all(p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    photos = load_photographs()
    names = sorted(photos)
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        photo = Image.fromarray(photos[names[i % len(names)]])
        w, h = photo.size
        crop_w = min(w, h * 4 / 3) * np.sqrt(rng.uniform(0.5, 1.0))
        crop_h = crop_w * 3 / 4
        x0, y0 = rng.uniform(0, w - crop_w), rng.uniform(0, h - crop_h)
        image = photo.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(path, quality=QUALITY)
    marker.write_text(json.dumps(spec))
    return paths


def decode_only(images: list[Path], size, batch_size: int, workers: int, draft: bool) -> None:
    """The limit: the loader ``kdiqa predict`` uses, every batch fetched, nothing scored."""
    for _ in view_loader(images, size, batch_size, workers, draft):
        pass


def run_predict(args: list[str]) -> None:
    """``kdiqa predict`` in this process; its stderr (summary line, disabled bar) is not shown."""
    with contextlib.redirect_stderr(io.StringIO()):
        code = kdiqa_main(["predict", *args])
    if code != 0:
        raise SystemExit(f"kdiqa predict {' '.join(args)} failed with exit code {code}")


@torch.no_grad()
def model_only(model, views: torch.Tensor, n: int, workers: int) -> None:
    """The model on ready views, ``n`` images in batches, with the threads predict gives it."""
    with model_threads(workers, torch.device("cpu")):
        for _ in range(0, n, len(views)):
            model(views)


@torch.no_grad()
def scores_with(model, images: list[Path], size, reduce_to) -> np.ndarray:
    """Scores with decoding down to ``reduce_to`` (None: every pixel), for the fidelity table."""
    dataset = ImageViews(images, ViewSampler(size, train=False), draft=False)
    dataset.reduce_to = reduce_to  # what draft=True sets, at another margin
    loader = torch.utils.data.DataLoader(dataset, batch_size=DEFAULT_BATCH_SIZE, num_workers=default_workers(),
                                         collate_fn=collate_views)
    out = []
    for _, views, _ in loader:
        out += model(views)["score"].float().tolist()
    return np.asarray(out)


def first_score(command: list[str]) -> float:
    """Seconds from launch to the first data row on stdout; the process (and its workers) are then killed."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        header = proc.stdout.readline()
        row = proc.stdout.readline() if header.startswith("path,") else ""
        seconds = time.perf_counter() - start
        if not row:
            raise SystemExit(f"{' '.join(command)}: no score ({proc.stderr.read().strip()[-300:]})")
        return seconds
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def time_import(module: str) -> float:
    """Seconds to start a fresh interpreter and import ``module``."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=REPO)
    return time.perf_counter() - start


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def peak_rss(images: list[Path], n: int, model: str, folder: Path) -> tuple[float, float, float]:
    """(main MiB, largest worker MiB, images/s) of ``kdiqa predict`` over ``n`` images (files reused cyclically).

    The main process reports its own peak; the workers' RSS is sampled every 0.1 s (they exit before
    they could report), so a spike shorter than that may be missed.
    """
    listing = folder / f"list-{n}.csv"
    with open(listing, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path"])
        writer.writerows([str(images[i % len(images)])] for i in range(n))
    out = folder / f"rss-{n}.csv"
    out.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", RSS_CODE, "predict", str(listing), "--model", model, "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    worker_kib = 0
    while proc.poll() is None:
        worker_kib = max([worker_kib, *(_rss_kib(c) for c in _children(proc.pid))])
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"peak RSS run failed: {stderr.strip()[-500:]}")
    main_kib, seconds = stdout.split()[-2:]
    return int(main_kib) / 1024, worker_kib / 1024, n / float(seconds)


def export_onnx(model: str, folder: Path) -> tuple[Path | None, str]:
    out = folder / "kd.onnx"
    done = subprocess.run([*KDIQA, "export", model, "--format", "onnx", "--dynamic-batch", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["?"])[-1]
    return out, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (median)")
    parser.add_argument("--small", type=int, default=1000, help="images of the smaller peak-RSS run")
    parser.add_argument("--big", type=int, default=10000, help="images of the larger peak-RSS run")
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--model", default=str(REPO / "runs" / "quickstart" / "students" / "kd"))
    parser.add_argument("--workers", type=int, default=default_workers(), help="decoding workers (default: kdiqa's)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/kdiqa-predict-bench"))
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX start-up row")
    args = parser.parse_args()

    context = machine_context()
    print("$ " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"# {context['date']}; {context['cpu']}, {len(os.sched_getaffinity(0))} usable; load average {context['load average']} "
          f"(other jobs may be running); python {context['python']}, torch {context['torch']}")
    start = time.perf_counter()
    images = make_jpegs(args.folder / f"jpegs-{args.images}", args.images)
    model, _ = load_scorer(args.model)
    size = model_image_size(model, None)
    print(f"# {len(images)} JPEGs {WIDTH}x{HEIGHT} q{QUALITY} in {args.folder} ({time.perf_counter() - start:.0f} s to make or find); "
          f"model {args.model} (input {size}); {args.workers} workers, batch {args.batch_size}, draft margin {DRAFT_MARGIN}x")

    # 1. throughput, interleaved
    folder = str(images[0].parent)
    common = ["--model", args.model, "--workers", str(args.workers), "--batch-size", str(args.batch_size)]
    outs = {draft: args.folder / f"scores-{'draft' if draft else 'full'}.csv" for draft in (True, False)}

    def predict_call(draft: bool):
        def call() -> None:
            outs[draft].unlink(missing_ok=True)
            run_predict([folder, *common, "--output", str(outs[draft]), *([] if draft else ["--no-draft"])])
        return call

    views = torch.rand(args.batch_size, 3, *((size, size) if isinstance(size, int) else size))
    calls = {
        "decode+resize only, draft": lambda: decode_only(images, size, args.batch_size, args.workers, True),
        "kdiqa predict, draft": predict_call(True),
        "decode+resize only, full decode": lambda: decode_only(images, size, args.batch_size, args.workers, False),
        "kdiqa predict, full decode": predict_call(False),
        "model alone (ready views)": lambda: model_only(model, views, len(images), args.workers),
    }
    times = time_interleaved(calls, dict.fromkeys(calls, args.rounds), dict.fromkeys(calls, 0))
    rate = {name: len(images) / statistics.median(t) for name, t in times.items()}
    print(f"\n## throughput ({len(images)} images, median of {args.rounds} interleaved rounds)")
    print(f"{'':34}{'images/s':>10}{'min-max':>16}")
    for name, t in times.items():
        print(f"{name:34}{rate[name]:>10.1f}{f'{len(images) / max(t):.0f}-{len(images) / min(t):.0f}':>16}")
    cores = len(os.sched_getaffinity(0))
    ratios = {}
    for label, draft_name in (("draft", "draft"), ("full decode", "full decode")):
        limit, scored = rate[f"decode+resize only, {draft_name}"], rate[f"kdiqa predict, {draft_name}"]
        # every image costs cores/limit core-seconds of decoding and 1/model of scoring; on busy cores both add up
        ceiling = 1 / (1 / limit + 1 / (cores * rate["model alone (ready views)"]))
        ratios[label] = scored / limit
        print(f"# {label}: predict / limit = {scored / limit:.2f}; CPU-bound ceiling when decoding and scoring share "
              f"{cores} cores = {ceiling:.0f} img/s, predict reaches {scored / ceiling:.2f} of it")
    print(f"# draft decoding speeds the limit up {rate['decode+resize only, draft'] / rate['decode+resize only, full decode']:.2f}x, "
          f"kdiqa predict {rate['kdiqa predict, draft'] / rate['kdiqa predict, full decode']:.2f}x")

    # 2. fidelity of draft decoding
    draft_rows, full_rows = list(read_rows(outs[True])), list(read_rows(outs[False]))
    assert [r["path"] for r in draft_rows] == [r["path"] for r in full_rows]
    full = np.asarray([r["score"] for r in full_rows])
    delta = np.abs(np.asarray([r["score"] for r in draft_rows]) - full)
    height, width = (size, size) if isinstance(size, int) else size
    delta_1x = np.abs(scores_with(model, images, size, (width, height)) - full)
    print(f"\n## draft decoding vs full decoding, |Δscore| over {len(images)} images (scores span {full.min():.3f}-{full.max():.3f}, "
          f"sd {full.std():.3f}; CSV rounds to 1e-6)")
    print(f"{'decoded down to':34}{'max':>10}{'mean':>10}")
    print(f"{f'>= {DRAFT_MARGIN}x the input (kdiqa)':34}{delta.max():>10.4f}{delta.mean():>10.4f}")
    print(f"{'>= 1x the input (not used)':34}{delta_1x.max():>10.4f}{delta_1x.mean():>10.4f}")

    # 3. start-up: a fresh process to the first score
    # an import-only row is a module name; the old row is what kdiqa predict imported before issue 17
    commands = {"python -c 'import torch' (floor)": "torch",
                "import kdiqa.cli.commands (predict before)": "kdiqa.cli.commands",
                "kdiqa predict, student folder": [*KDIQA, "predict", folder, "--model", args.model]}
    if not args.no_onnx:
        onnx, why = export_onnx(args.model, args.folder)
        if onnx is None:
            print(f"# ONNX start-up row skipped: kdiqa export failed ({why})")
        else:
            commands["kdiqa predict, exported .onnx"] = [*KDIQA, "predict", folder, "--model", str(onnx)]
    startup: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(args.startup_repeats):
        for name in commands if r % 2 == 0 else reversed(list(commands)):
            command = commands[name]
            startup[name].append(time_import(command) if isinstance(command, str) else first_score(command))
    print(f"\n## start-up: launch to the first score on stdout (median of {args.startup_repeats}, fresh processes)")
    for name, t in startup.items():
        print(f"{name:44}{statistics.median(t):>8.2f} s   ({', '.join(f'{v:.2f}' for v in t)})")

    # 4. memory
    small, big = peak_rss(images, args.small, args.model, args.folder), peak_rss(images, args.big, args.model, args.folder)
    print("\n## peak RSS of kdiqa predict (MiB)")
    print(f"{'images':>8}{'main':>10}{'worker':>10}{'images/s':>10}")
    for n, (main_mib, worker_mib, ips) in ((args.small, small), (args.big, big)):
        print(f"{n:>8}{main_mib:>10.0f}{worker_mib:>10.0f}{ips:>10.1f}")

    # goals
    first = statistics.median(startup["kdiqa predict, student folder"])
    rss_ratio = big[0] / small[0]
    print("\n## goals (issue 17)")
    print(f"predict >= 0.8x the decode-and-resize limit (draft): {ratios['draft']:.2f}x -> {'met' if ratios['draft'] >= 0.8 else 'NOT met'}"
          f" (full decode: {ratios['full decode']:.2f}x)")
    print(f"first score <= 1.5 s (student folder): {first:.2f} s -> {'met' if first <= 1.5 else 'NOT met'}"
          f" (import torch alone: {statistics.median(startup[next(iter(startup))]):.2f} s)")
    if "kdiqa predict, exported .onnx" in startup:
        onnx_first = statistics.median(startup["kdiqa predict, exported .onnx"])
        print(f"first score <= 1.5 s (exported .onnx): {onnx_first:.2f} s -> {'met' if onnx_first <= 1.5 else 'NOT met'}")
    print(f"peak RSS flat ({args.big} vs {args.small} images, within 10 %): {rss_ratio:.2f}x main, "
          f"{big[1] / small[1]:.2f}x worker -> {'met' if rss_ratio <= 1.1 and big[1] / small[1] <= 1.1 else 'NOT met'}")
    print(f"# total {time.perf_counter() - start:.0f} s; peak RSS of this script {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
