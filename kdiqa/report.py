"""The run report: a table people read and plots they would rather look at.

Reads what the stages left in the run folder (``metrics.json``, ``predictions/*.json``) and the saved
models' sizes and speeds, and writes ``report.md`` plus PNG plots beside it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdiqa.io import atomic_path
from kdiqa.run import RunDir


@dataclass
class ModelInfo:
    label: str  # as shown in the report, e.g. "teacher (dpiqa tiny)"
    key: str  # the key in metrics.json and predictions/<key>.json
    params: int
    latency_ms: float  # median, batch 1
    latency_spread_ms: float  # interquartile range


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def speedups(models: list[ModelInfo]) -> dict[str, float]:
    """Each model's batch-1 speed-up over the run's teacher (the model keyed ``teacher``), if there is one."""
    teacher = next((m for m in models if m.key == "teacher"), None)
    if teacher is None:
        return {}
    return {m.key: teacher.latency_ms / m.latency_ms for m in models if m.latency_ms > 0}


def summary_table(metrics: dict[str, Any], models: list[ModelInfo], split: str = "test") -> str:
    """A markdown table: one row per model, test metrics, size, speed and speed-up over the teacher."""
    faster = speedups(models)
    head = "| model | SRCC | KRCC | PLCC (raw) | PLCC (logistic fit) | RMSE | params | latency, batch 1 (ms) | vs teacher |"
    rows = [head, "|" + "---|" * 9]
    for m in models:
        r = metrics.get(m.key, {}).get(split, {})
        speed = f"{faster[m.key]:.1f}× faster" if m.key in faster and m.key != "teacher" else "—"
        rows.append(
            f"| {m.label} | {_fmt(r.get('srcc', float('nan')))} | {_fmt(r.get('krcc', float('nan')))} | "
            f"{_fmt(r.get('plcc', float('nan')))} | {_fmt(r.get('plcc_fitted', float('nan')))} | "
            f"{_fmt(r.get('rmse', float('nan')))} | {m.params:,} | {m.latency_ms:.2f} ± {m.latency_spread_ms / 2:.2f} | {speed} |"
        )
    return "\n".join(rows)


def save_png(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def pyplot() -> Any:
    """pyplot drawing into files only (never a window), imported when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scatter(run: RunDir, models: list[ModelInfo], split: str = "test") -> Path | None:
    plt = pyplot()
    found = [(m, json.loads(run.predictions(m.key).read_text())) for m in models if run.predictions(m.key).is_file()]
    found = [(m, p[split]) for m, p in found if split in p]
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(4 * len(found), 4), squeeze=False)
    for ax, (m, p) in zip(axes[0], found, strict=True):
        ax.scatter(p["mos"], p["pred"], s=6, alpha=0.5)
        ax.set_xlabel("MOS (normalised)")
        ax.set_ylabel("predicted")
        ax.set_title(m.label, fontsize=9)
    fig.suptitle(f"predicted vs MOS, {split} split")
    path = run.plot(f"scatter_{split}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    plt.close(fig)
    return path


def plot_bars(run: RunDir, metrics: dict[str, Any], models: list[ModelInfo], split: str = "test") -> Path:
    from matplotlib.ticker import NullFormatter

    plt = pyplot()
    labels = [m.label for m in models]
    srcc = [metrics.get(m.key, {}).get(split, {}).get("srcc", np.nan) for m in models]
    plcc = [metrics.get(m.key, {}).get(split, {}).get("plcc", np.nan) for m in models]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(models))
    ax1.bar(x - 0.2, srcc, 0.4, label="SRCC")
    ax1.bar(x + 0.2, plcc, 0.4, label="PLCC (raw)")
    ax1.set_xticks(x, labels, rotation=15, fontsize=8)
    ax1.set_ylim(min(0.0, *(v for v in srcc + plcc if np.isfinite(v))), 1.0)
    ax1.set_title(f"accuracy, {split} split")
    ax1.legend()
    ax2.scatter([m.latency_ms for m in models], [m.params for m in models], s=60)
    # Models of one architecture (KD and label-only students, timed once by the report stage) sit on the
    # same spot: one label per spot, listing them, placed beside the point and kept inside the axes.
    spots: list[tuple[ModelInfo, list[str]]] = []
    for m in models:
        same = next((s for s in spots if s[0].params == m.params and s[0].latency_ms == m.latency_ms), None)
        if same is None:
            spots.append((m, [m.label]))
        else:
            same[1].append(m.label)
    faster = speedups(models)
    for m, labels in spots:
        text = "\n".join(labels)
        if m.key in faster and m.key != "teacher":
            text += f"\n({faster[m.key]:.1f}× faster than the teacher)"
        right = m.latency_ms >= max(x.latency_ms for x in models)
        ax2.annotate(text, (m.latency_ms, m.params), xytext=(-8 if right else 8, 0), textcoords="offset points",
                     ha="right" if right else "left", va="center", fontsize=8)
    ax2.margins(x=0.3, y=0.3)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("latency, batch 1 (ms)")
    ax2.set_ylabel("parameters")
    ax2.set_title("size and speed")
    for axis in (ax2.xaxis, ax2.yaxis):  # log axes over a narrow range label every minor tick: unreadable
        axis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    path = run.plot(f"summary_{split}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    plt.close(fig)
    return path


def write_report(run: RunDir, models: list[ModelInfo], title: str, notes: str = "") -> str:
    """Write report.md and the plots; return the summary table (also printed by the CLI)."""
    metrics = run.read_metrics()
    table = summary_table(metrics, models)
    scatter = plot_scatter(run, models)
    bars = plot_bars(run, metrics, models)
    lines = [f"# {title}", "", table, ""]
    if notes:
        lines += [notes, ""]
    lines += [
        "SRCC/KRCC/PLCC/RMSE over the whole test split; PLCC (raw) is what pyiqa and DP-IQA report, "
        "PLCC (logistic fit) follows the VQEG 4-parameter convention. Checkpoints were chosen on the "
        "validation split. Latency: median of batch-1 forwards after warm-up on this run's device, ± half "
        "the interquartile range.",
        "",
    ]
    for plot in (scatter, bars):
        if plot is not None:
            lines.append(f"![{plot.stem}]({plot.relative_to(run.root)})")
    with atomic_path(run.report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return table
