"""What ``kdiqa bench`` writes: ``bench.csv``, ``bench.md`` (with the machine it ran on) and ``bench_pareto.png``."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from kdiqa.bench.rows import BenchRow, write_csv
from kdiqa.io import atomic_path
from kdiqa.measure import machine_context
from kdiqa.report import pyplot, save_png
from kdiqa.run import RunDir


def _num(value: float, digits: int) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def _sig(value: float) -> str:
    """Three significant digits without scientific notation (1,065 rather than 1.06e+03)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_table(rows: Sequence[BenchRow]) -> str:
    """The markdown table of bench.md (also what the CLI prints)."""
    head = ("| model | params (M) | GFLOPs/img | latency b1 (ms) median (p10–p90) | throughput (img/s) median (p10–p90) "
            "| peak memory (MB) | SRCC | PLCC |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.model} | {_sig(r.params / 1e6)} | {_sig(r.gflops)} | {_sig(r.latency_ms)} ({_sig(r.latency_p10_ms)}–{_sig(r.latency_p90_ms)}) "
            f"| {_sig(r.throughput_img_s)} ({_sig(r.throughput_p10_img_s)}–{_sig(r.throughput_p90_img_s)}) @ b{r.throughput_batch} "
            f"| {_sig(r.peak_memory_mb)} | {_num(r.srcc, 4)} | {_num(r.plcc, 4)} |"
        )
    return "\n".join(lines)


def pareto_front(points: Sequence[tuple[float, float]], maximise_y: bool) -> list[int]:
    """Indices of the points no other point beats on both x (lower is better) and y, sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1] if maximise_y else points[i][1]))
    front, best = [], None
    for i in order:
        y = points[i][1]
        if best is None or (y > best if maximise_y else y < best):
            front.append(i)
            best = y
    return front


def plot_pareto(rows: Sequence[BenchRow], path: Path) -> tuple[Path, str]:
    """SRCC vs batch-1 latency (point area ∝ parameters); parameters vs latency when no row has an SRCC."""
    plt = pyplot()
    with_srcc = [r for r in rows if not math.isnan(r.srcc)]
    mode = "srcc" if with_srcc else "params"
    shown = with_srcc if with_srcc else list(rows)
    xs = [r.latency_ms for r in shown]
    ys = [r.srcc for r in shown] if mode == "srcc" else [r.params / 1e6 for r in shown]
    biggest = max(r.params for r in shown) or 1
    sizes = [40 + 600 * math.sqrt(r.params / biggest) for r in shown]
    colours = ["tab:red" if r.kind == "teacher" else "tab:blue" for r in shown]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(xs, ys, s=sizes, c=colours, alpha=0.6, edgecolors="k", linewidths=0.5)
    rank = {i: k for k, i in enumerate(sorted(range(len(shown)), key=lambda i: xs[i]))}
    for i, (r, x, y) in enumerate(zip(shown, xs, ys, strict=True)):
        label = r.backbone if r.kind == "student" else r.model
        below = rank[i] % 2 == 1  # neighbours in latency alternate above/below their point
        ax.annotate(f"{label}\n{_sig(r.params / 1e6)} M", (x, y), fontsize=7, xytext=(5, -20 if below else 5),
                    textcoords="offset points")
    front = pareto_front(list(zip(xs, ys, strict=True)), maximise_y=mode == "srcc")
    if len(front) > 1:
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:green", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
    ax.margins(0.12)
    ax.set_xscale("log")
    ax.set_xlabel(f"latency, batch 1, {shown[0].device} (ms, log)")
    if mode == "srcc":
        ax.set_ylabel("test SRCC after distillation")
        ax.set_title("accuracy vs speed (point area ∝ parameters)")
        for r in rows:  # models without an SRCC (e.g. a random-weight teacher) still mark their latency
            if math.isnan(r.srcc):
                ax.axvline(r.latency_ms, ls="--", lw=1, color="tab:red" if r.kind == "teacher" else "grey")
                ax.annotate(f"{r.model} (no SRCC)", (r.latency_ms, 0.02), xycoords=("data", "axes fraction"),
                            rotation=90, fontsize=7, xytext=(-9, 0), textcoords="offset points")
    else:
        ax.set_yscale("log")
        ax.set_ylabel("parameters (M, log)")
        ax.set_title("size vs speed — no SRCC measured (run with --distill for SRCC vs latency)", fontsize=9)
    save_png(fig, path)
    plt.close(fig)
    return path, mode


def write_bench(run: RunDir, rows: Sequence[BenchRow], recipe_name: str, context: dict[str, str] | None = None) -> str:
    """Write bench.csv, bench.md and bench_pareto.png into the run folder; return the markdown table."""
    context = context or machine_context()
    write_csv(run.bench_csv, rows)
    plot, mode = plot_pareto(rows, run.bench_plot)
    table = format_table(rows)
    methods = sorted({r.memory_method for r in rows})
    lines = [
        f"# kdiqa bench: {recipe_name}",
        "",
        "; ".join(f"{k}: {v}" for k, v in context.items()),
        "",
        table,
        "",
        "- GFLOPs: one batch-1 forward counted by torch.utils.flop_counter.FlopCounterMode (2 per multiply-add "
        "of convolutions, matrix products and attention; elementwise ops not counted).",
        "- Latency: batch-1 forward under torch.inference_mode; throughput: images per second at the batch "
        "shown. Models are timed in interleaved rounds (order reversed each round); median over the repeats, "
        "10th–90th percentile in brackets. Repeats: "
        + ", ".join(f"{r.model} {r.latency_repeats}" for r in rows) + ".",
        "- Peak memory at the throughput batch, weights included; " + "; ".join(methods) + ".",
        "- SRCC/PLCC: test split after distillation from the recipe's cache with its schedule (`--distill`); "
        "n/a where not measured.",
    ]
    notes = [f"- {r.model}: {r.note}" for r in rows if r.note]
    lines += notes
    lines += ["", f"![{'SRCC' if mode == 'srcc' else 'parameters'} vs latency]({plot.name})", ""]
    with atomic_path(run.bench_md) as tmp:
        tmp.write_text("\n".join(lines))
    return table
