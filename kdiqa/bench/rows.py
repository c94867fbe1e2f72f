"""One measured model: a line of ``bench.csv``, written and read back typed."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kdiqa.io import atomic_path


@dataclass
class BenchRow:
    """One line of bench.csv; times in milliseconds, throughput in images per second."""

    model: str
    kind: str  # "student" or "teacher"
    backbone: str
    image_size: int
    params: int
    gflops: float  # per image, batch 1
    latency_ms: float  # median, batch 1
    latency_p10_ms: float
    latency_p90_ms: float
    latency_repeats: int
    throughput_batch: int
    throughput_img_s: float  # batch / median batch time
    throughput_p10_img_s: float  # from the 90th-percentile batch time (slow end)
    throughput_p90_img_s: float  # from the 10th-percentile batch time (fast end)
    throughput_repeats: int
    peak_memory_mb: float  # at the throughput batch
    memory_method: str
    srcc: float = math.nan  # test split, after distillation (students) or fitting (a trained teacher)
    plcc: float = math.nan
    device: str = "cpu"
    threads: int = 1
    note: str = ""


BENCH_COLUMNS = [f.name for f in fields(BenchRow)]


def write_csv(path: Path, rows: Sequence[BenchRow]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=BENCH_COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(r).items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
    return path


def read_csv(path: str | Path) -> list[BenchRow]:
    """Rows of a bench.csv (to redraw the table or plot, or to compare runs)."""
    types = {f.name: f.type for f in fields(BenchRow)}
    convert = {"int": int, "float": float, "str": str}
    with open(path, newline="") as f:
        return [BenchRow(**{k: convert[types[k]](v) for k, v in row.items()}) for row in csv.DictReader(f)]
