"""Benchmark: int8 and fp16 students in ONNX Runtime on this CPU — latency against float32, accuracy against the float student.

    .venv/bin/python benchmarks/export_quantized.py [--backbones efficientnet_b0,mobilenetv3_large_100]
        [--sizes 224,384] [--batches 1,8] [--repeats 20] [--threads 1] [--run runs/quickstart]
        [--out runs/bench-quantize] [--no-variants]

Latency: each backbone is built as a kdiqa student (timm backbone + pooled-MLP head, random weights —
speed does not depend on the weights' values) at each size, exported to float32 ONNX (dynamic batch,
parity-checked) and converted with kdiqa's own functions: int8 as ``kdiqa export --quantize int8`` makes
it (QDQ, calibrated on 32 of the quickstart run's cached training views rendered at that size), the same
in QOperator format, and fp16. The four ONNX Runtime sessions (CPU, ``--threads`` intra-op threads,
graph optimisation ORT_ENABLE_ALL) run the same input in interleaved rounds; printed: median ms per
batch and the speed-up over float32 (fp32 ms / other ms). Goal: int8 >= 2x faster than fp32 ORT.

Variants (EfficientNet-B0, 224 px): what else was tried for int8 — no pooling rewrite, per-tensor weights,
``reduce_range``, QOperator, graph optimisation ORT_ENABLE_EXTENDED, 2 threads — each against float32
under the same session settings.

Accuracy: the quickstart's KD student (``--run``/students/kd, its recipe and cache) exported with
``kdiqa export --quantize int8`` and ``--precision fp16`` (``--force``, so a failing figure is still
shown); the accuracy check each export runs is printed: test SRCC/PLCC of the file vs the float student.
Goal: |ΔSRCC| <= 0.01. Exports are written to ``--out`` (never into the run folder).
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.calibration import CalibrationViews, find_export_data  # noqa: E402
from kdiqa.export import export_student  # noqa: E402
from kdiqa.measure import machine_context, time_interleaved  # noqa: E402
from kdiqa.quantize import convert_fp16, quantize_int8  # noqa: E402
from kdiqa.registry import STUDENTS  # noqa: E402

CALIBRATION_VIEWS = 32  # latency models have random weights: their ranges only need to be plausible
GOAL_SPEEDUP, GOAL_DELTA = 2.0, 0.01


def session(path: Path, threads: int, level: str = "all"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_sessions(sessions: dict, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Median ms per call of each session on one input, interleaved round by round."""
    x = np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)
    calls = {name: (lambda s=s: s.run(None, {"images": x})) for name, s in sessions.items()}
    times = time_interleaved(calls, dict.fromkeys(calls, repeats), dict.fromkeys(calls, 2))
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def build(backbone: str, size: int, folder: Path, data) -> dict[str, Path]:
    """The float32 export of a random-weight student and its converted files."""
    torch.manual_seed(0)
    STUDENTS.build("timm", backbone=backbone, image_size=size).save_pretrained(folder)
    paths = {"fp32": folder / "fp32.onnx", "int8": folder / "int8.onnx", "int8 QOp": folder / "int8-qop.onnx",
             "fp16": folder / "fp16.onnx"}
    export_student(folder, out=paths["fp32"], dynamic_batch=True)
    views = CalibrationViews(data, (size, size), CALIBRATION_VIEWS)
    quantize_int8(paths["fp32"], paths["int8"], views.batches(8, fixed=False))
    quantize_int8(paths["fp32"], paths["int8 QOp"], views.batches(8, fixed=False), quant_format="qoperator")
    convert_fp16(paths["fp32"], paths["fp16"])
    return paths


def latency(args, data, tmp: Path) -> list[float]:
    columns = ["fp32", "int8", "int8 QOp", "fp16"]
    print(f"\n## latency: median ms per batch over {args.repeats} interleaved rounds, {args.threads} thread(s); "
          "speed-up = fp32 ms / ms")
    print(f"{'model':<24}{'size':>5}{'batch':>6}" + "".join(f"{c + ' ms':>12}" for c in columns)
          + f"{'int8 x':>9}{'QOp x':>8}{'fp16 x':>8}")
    ratios = []
    for backbone in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            paths = build(backbone, size, tmp / f"{backbone}-{size}", data)
            sessions = {name: session(paths[name], args.threads) for name in columns}
            for batch in (int(b) for b in args.batches.split(",")):
                ms = time_sessions(sessions, batch, size, args.repeats)
                ratios.append(ms["fp32"] / ms["int8"])
                print(f"{backbone:<24}{size:>5}{batch:>6}" + "".join(f"{ms[c]:>12.1f}" for c in columns)
                      + f"{ms['fp32'] / ms['int8']:>8.2f}x{ms['fp32'] / ms['int8 QOp']:>7.2f}x{ms['fp32'] / ms['fp16']:>7.2f}x",
                      flush=True)
            sizes = ", ".join(f"{name} {p.stat().st_size / 2**20:.1f} MiB" for name, p in paths.items())
            print(f"#   {backbone} {size}px files: {sizes}")
    return ratios


def variants(args, data, tmp: Path) -> None:
    backbone, size = "efficientnet_b0", 224
    folder = tmp / "variants"
    torch.manual_seed(0)
    STUDENTS.build("timm", backbone=backbone, image_size=size).save_pretrained(folder)
    fp32 = folder / "fp32.onnx"
    export_student(folder, out=fp32, dynamic_batch=True)
    views = CalibrationViews(data, (size, size), CALIBRATION_VIEWS)
    options = {
        "kdiqa default (QDQ, per-channel, pooling rewrite)": {},
        "no ReduceMean -> GlobalAveragePool rewrite": {"rewrite_pooling": False},
        "per-tensor weights": {"per_channel": False},
        "reduce_range": {"reduce_range": True},
        "QOperator format": {"quant_format": "qoperator"},
    }
    files = {}
    for i, (name, kwargs) in enumerate(options.items()):
        files[name] = folder / f"v{i}.onnx"
        quantize_int8(fp32, files[name], views.batches(8, fixed=False), **kwargs)
    print(f"\n## int8 variants, {backbone} {size}px: median ms ({args.repeats} interleaved rounds), speed-up over fp32 "
          "under the same session settings")
    print(f"{'variant':<58}{'batch':>6}{'fp32 ms':>10}{'int8 ms':>10}{'speed-up':>10}")
    settings = [(args.threads, "all", ""), (args.threads, "extended", ", graph level EXTENDED (no NCHWc layout)"),
                (2, "all", ", 2 threads")]
    default = next(iter(options))
    for batch in (int(b) for b in args.batches.split(",")):
        sessions = {"fp32": session(fp32, args.threads), **{n: session(p, args.threads) for n, p in files.items()}}
        ms = time_sessions(sessions, batch, size, args.repeats)
        for name in options:
            print(f"{name:<58}{batch:>6}{ms['fp32']:>10.1f}{ms[name]:>10.1f}{ms['fp32'] / ms[name]:>9.2f}x", flush=True)
        for threads, level, label in settings[1:]:
            if threads == args.threads and level == "all":
                continue
            pair = {"fp32": session(fp32, threads, level), "int8": session(files[default], threads, level)}
            ms = time_sessions(pair, batch, size, args.repeats)
            print(f"{'kdiqa default' + label:<58}{batch:>6}{ms['fp32']:>10.1f}{ms['int8']:>10.1f}"
                  f"{ms['fp32'] / ms['int8']:>9.2f}x", flush=True)


def accuracy(args) -> list[tuple[str, float]]:
    student = Path(args.run) / "students" / "kd"
    out = Path(args.out)
    print(f"\n## accuracy: {student} (recipe {Path(args.run) / 'recipe.yaml'}), held-out test split, the export's own check")
    print(f"{'precision':<10}{'images':>7}{'float SRCC':>11}{'SRCC':>8}{'ΔSRCC':>9}{'float PLCC':>11}{'PLCC':>8}{'ΔPLCC':>9}"
          f"{'rank agr.':>10}{'max|Δ|':>8}{'file KiB':>9}  check")
    deltas = []
    for precision in ("int8", "fp16"):
        path = out / f"kd.{precision}.onnx"
        meta = export_student(student, precision=precision, out=path, force=True)
        a = meta["accuracy"]
        deltas.append((precision, a["delta_srcc"]))
        print(f"{precision:<10}{a['images']:>7}{a['float']['srcc']:>11.4f}{a['exported']['srcc']:>8.4f}{a['delta_srcc']:>+9.4f}"
              f"{a['float']['plcc']:>11.4f}{a['exported']['plcc']:>8.4f}{a['delta_plcc']:>+9.4f}{a['rank_agreement_srcc']:>10.4f}"
              f"{a['max_abs_score_diff']:>8.4f}{path.stat().st_size / 1024:>9.0f}  {'passed' if a['passed'] else 'FAILED'}",
              flush=True)
    print(f"#   files and sidecars (with the calibration and the check): {out}/kd.int8.onnx(.json), {out}/kd.fp16.onnx(.json)")
    return deltas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet_b0,mobilenetv3_large_100")
    parser.add_argument("--sizes", default="224,384")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1: a shared 2-core machine)")
    parser.add_argument("--run", default="runs/quickstart", help="a finished run folder: recipe, cache, students/kd")
    parser.add_argument("--out", default="runs/bench-quantize", help="where the KD student's int8/fp16 exports go")
    parser.add_argument("--no-variants", action="store_true", help="skip the table of int8 options tried")
    args = parser.parse_args()
    os.chdir(REPO)  # the run's recipe names its data relative to the repository
    torch.set_num_threads(args.threads)
    import onnxruntime

    context = machine_context()
    print(f"# command: .venv/bin/python benchmarks/export_quantized.py {shlex.join(sys.argv[1:])}".rstrip())
    print(f"# date: {context['date']}; cpu: {context['cpu']}; load average: {context['load average']}")
    print(f"# python {context['python']}, torch {context['torch']}, onnxruntime {onnxruntime.__version__}, "
          f"ORT threads {args.threads}, CPU execution provider")
    data = find_export_data(Path(args.run) / "students" / "kd", None, "benchmark")
    with tempfile.TemporaryDirectory(prefix="kdiqa-bench-quantize-") as tmp:
        ratios = latency(args, data, Path(tmp))
        if not args.no_variants:
            variants(args, data, Path(tmp))
    deltas = accuracy(args)

    met = sum(r >= GOAL_SPEEDUP for r in ratios)
    print(f"\ngoal int8 >= {GOAL_SPEEDUP:g}x faster than fp32 ONNX Runtime: {'met' if met == len(ratios) else 'NOT met'} "
          f"({met} of {len(ratios)} rows; speed-up {min(ratios):.2f}x-{max(ratios):.2f}x, median {statistics.median(ratios):.2f}x)")
    worst = max(abs(d) for _, d in deltas)
    print(f"goal |ΔSRCC| <= {GOAL_DELTA:g} vs the float student on the quickstart test split: "
          f"{'met' if worst <= GOAL_DELTA else 'NOT met'} ({', '.join(f'{p} {d:+.4f}' for p, d in deltas)})")


if __name__ == "__main__":
    main()
