"""Measure every model of a bench: FLOPs, peak memory, batch-1 latency and batch throughput."""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdiqa.bench.models import bench_student, bench_teacher, check_backbones, distill_student, teacher_size
from kdiqa.bench.rows import BenchRow
from kdiqa.cache import require_complete
from kdiqa.config import Recipe
from kdiqa.errors import ConfigError
from kdiqa.measure import (
    count_flops,
    count_parameters,
    default_device,
    device_sync,
    forward_call,
    peak_memory,
    percentile,
    time_interleaved,
)
from kdiqa.run import RunDir


@dataclass
class _Entry:
    """A model under measurement and what is known about it before timing."""

    row_name: str
    kind: str
    backbone: str
    model: nn.Module
    size: int
    batch: int
    repeats: int
    warmup: int
    flops: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


def run_bench(
    recipe: Recipe,
    run: RunDir,
    students: Sequence[str],
    teacher: str = "sd15",
    distill: bool = False,
    repeats: int = 10,
    teacher_repeats: int = 2,
    warmup: int = 2,
    batch: int = 32,
    teacher_batch: int = 4,
    device: str | None = None,
    say: Callable[[str], None] = print,
) -> list[BenchRow]:
    """Measure every student backbone (and the teacher row) at the recipe's ``views.size``."""
    for name, value in (("--repeats", repeats), ("--teacher-repeats", teacher_repeats), ("--batch", batch), ("--teacher-batch", teacher_batch)):
        if value < 1:
            raise ConfigError(f"bench {name}: must be >= 1, got {value}")
    if warmup < 0:
        raise ConfigError(f"bench --warmup: must be >= 0, got {warmup}")
    students = list(dict.fromkeys(students))
    check_backbones(students)
    if distill:
        require_complete(run.cache)  # one line saying how to build or finish it
    device = device or str(default_device())
    size = recipe.views.size

    entries: list[_Entry] = []
    for backbone in students:
        if distill:
            say(f"== distilling {backbone} from {run.cache}")
            model, metrics = distill_student(recipe, run, backbone)
            entry = _Entry(f"KD student {backbone}", "student", backbone, model, size, batch, repeats, warmup, metrics=metrics,
                           note="timed as saved after distillation (its projectors run in the forward too)")
        else:
            model, note = bench_student(recipe, backbone)
            entry = _Entry(backbone, "student", backbone, model, size, batch, repeats, warmup, note=note)
        entries.append(entry)
    if teacher != "none":
        say(f"== building teacher {teacher}")
        model, name, label, metrics, note = bench_teacher(teacher, recipe, run)
        t_size, size_note = teacher_size(model, size)
        note = "; ".join(n for n in (note, size_note) if n)
        # the FLOP count and the memory pass are the teacher's warm-ups: its forwards are slow
        entries.append(_Entry(name, "teacher", label, model, t_size, teacher_batch, teacher_repeats, 0, metrics=metrics, note=note))

    calls: dict[str, Callable[[], Any]] = {}
    reps: dict[str, int] = {}
    warm: dict[str, int] = {}
    memory: dict[str, tuple[int, str]] = {}
    for e in entries:
        e.model.to(device).eval()
        say(f"== {e.row_name}: counting FLOPs and peak memory at {e.size} px")
        e.flops = count_flops(e.model, e.size, device)
        one = torch.rand(1, 3, e.size, e.size, device=device)
        many = torch.rand(e.batch, 3, e.size, e.size, device=device)
        memory[e.row_name] = peak_memory(e.model, many)
        for key, images in ((f"{e.row_name}|1", one), (f"{e.row_name}|{e.batch}", many)):
            calls[key], reps[key], warm[key] = forward_call(e.model, images), e.repeats, e.warmup
    say(f"== timing {len(entries)} models in interleaved rounds")
    times = time_interleaved(calls, reps, warm, device_sync(device))

    rows = []
    for e in entries:
        t1, tb = times[f"{e.row_name}|1"], times[f"{e.row_name}|{e.batch}"]
        mem, method = memory[e.row_name]
        rows.append(BenchRow(
            model=e.row_name, kind=e.kind, backbone=e.backbone, image_size=e.size,
            params=count_parameters(e.model), gflops=e.flops / 1e9,
            latency_ms=1000 * statistics.median(t1), latency_p10_ms=1000 * percentile(t1, 10),
            latency_p90_ms=1000 * percentile(t1, 90), latency_repeats=len(t1), throughput_batch=e.batch,
            throughput_img_s=e.batch / statistics.median(tb), throughput_p10_img_s=e.batch / percentile(tb, 90),
            throughput_p90_img_s=e.batch / percentile(tb, 10), throughput_repeats=len(tb),
            peak_memory_mb=mem / 2**20, memory_method=method, srcc=e.metrics.get("srcc", math.nan),
            plcc=e.metrics.get("plcc", math.nan), device=device, threads=torch.get_num_threads(), note=e.note,
        ))
    return rows
