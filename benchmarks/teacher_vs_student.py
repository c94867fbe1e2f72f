"""Benchmark: how much smaller and faster the students are than the true-size DP-IQA teacher.

    .venv/bin/python benchmarks/teacher_vs_student.py [--size 512] [--students efficientnet_b0,mobilenetv3_large_100]
        [--repeats 10] [--teacher-repeats 2] [--threads 1]

The teacher is DP-IQA in its ``sd15`` configuration (Stable Diffusion 1.5 VAE + U-Net, T2I adapter,
quality decoder) with random weights: speed does not depend on the weights' values. Students are timm
backbones with the pooled-MLP score head, random weights. Everything runs at batch 1 on the CPU, timed
in interleaved rounds (kdiqa.measure.time_interleaved) after warm-up; a 512² teacher forward takes tens
of seconds here, so it gets few repeats (``--teacher-repeats``) and one warm-up. FLOPs are counted with
FlopCounterMode; the teacher's on the meta device (no compute). Printed side by side: parameters,
GFLOPs, median latency (p10-p90) and the teacher/student ratios. Goal: students >= 100x faster.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdiqa.measure import count_flops, count_parameters, forward_call, machine_context, percentile, time_interleaved  # noqa: E402
from kdiqa.registry import STUDENTS, TEACHERS  # noqa: E402


def gflops(flops: int) -> str:
    return f"{flops / 1e9:.1f}" if flops >= 1e10 else f"{flops / 1e9:.3g}"


def ratio(value: float) -> str:
    return f"{value:.0f}x" if value >= 10 else f"{value:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--students", default="efficientnet_b0,mobilenetv3_large_100")
    parser.add_argument("--preset", default="sd15", help="DP-IQA preset of the teacher (default: sd15)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forwards per student")
    parser.add_argument("--teacher-repeats", type=int, default=2, help="timed forwards of the teacher")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = args.size
    print("# " + "; ".join(f"{k}: {v}" for k, v in machine_context().items()))
    print(f"# size {size}, batch 1, students {args.repeats} repeats, teacher {args.teacher_repeats} repeats + 1 warm-up, "
          "median ms (p10-p90), interleaved rounds", flush=True)

    models: dict[str, torch.nn.Module] = {}
    for name in args.students.split(","):
        torch.manual_seed(0)
        models[name] = STUDENTS.build("timm", backbone=name, image_size=size).eval()
    start = time.perf_counter()
    torch.manual_seed(0)
    teacher_name = f"dpiqa {args.preset}"
    models[teacher_name] = TEACHERS.build("dpiqa", preset=args.preset).eval()
    print(f"# built the {teacher_name} teacher (random weights) in {time.perf_counter() - start:.0f} s", flush=True)

    params = {k: count_parameters(m) for k, m in models.items()}
    flops = {k: count_flops(m, size) for k, m in models.items() if k != teacher_name}
    with torch.device("meta"):
        meta_teacher = TEACHERS.build("dpiqa", preset=args.preset).eval()
    flops[teacher_name] = count_flops(meta_teacher, size, device="meta")
    del meta_teacher

    images = torch.rand(1, 3, size, size)

    calls = {k: forward_call(m, images) for k, m in models.items()}
    repeats = {k: args.teacher_repeats if k == teacher_name else args.repeats for k in models}
    warmup = {k: 1 if k == teacher_name else 2 for k in models}
    start = time.perf_counter()
    times = time_interleaved(calls, repeats, warmup)
    print(f"# timing took {time.perf_counter() - start:.0f} s", flush=True)

    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    print(f"{'model':<24}{'params (M)':>12}{'GFLOPs':>10}{'latency ms (p10-p90)':>32}{'params ratio':>14}{'FLOPs ratio':>13}{'speed-up':>10}")
    for k in models:
        spread = f"{ms[k]:.1f} ({1000 * percentile(times[k], 10):.1f}-{1000 * percentile(times[k], 90):.1f})"
        ratios = ("", "", "") if k == teacher_name else (
            ratio(params[teacher_name] / params[k]), ratio(flops[teacher_name] / flops[k]), ratio(ms[teacher_name] / ms[k]))
        print(f"{k:<24}{params[k] / 1e6:>12.2f}{gflops(flops[k]):>10}{spread:>32}{ratios[0]:>14}{ratios[1]:>13}{ratios[2]:>10}")
    print("# ratios = teacher / student; speed-up = teacher latency / student latency (goal >= 100x)")


if __name__ == "__main__":
    main()
