"""``kdiqa bench``: the accuracy/speed table a user picks a student from, with the teacher as a yardstick.

Why each measurement is taken the way it is:

- FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` over one batch-1 forward: it counts
  2 FLOPs per multiply-add of convolutions, matrix products and attention, and nothing for elementwise
  ops, so the figure is comparable across architectures and does not depend on the machine.
- Times are taken in interleaved rounds (every model once per round, the order reversed each round) so
  that load from other processes on a shared machine hits every model alike; the table gives the
  median and the 10th-90th percentile spread.
- Peak memory on a GPU is ``torch.cuda.max_memory_allocated`` over one forward. A CPU has no such
  counter (RSS is shared with the allocator's caches and other threads), so there the peak is counted
  from the tensors themselves: weights, buffers and the input, plus the largest total of activation
  storages alive at once during the forward (:class:`LiveTensorBytes`). Kernel workspaces and
  allocator overhead are not included, so it is a lower bound of what the process needs.
- The teacher is timed with random weights when no trained one is named: speed does not depend on the
  weights' values, and the true-size ``sd15`` architecture is what a user would distil from.
"""
from __future__ import annotations

import copy
import csv
import io
import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from kdiqa.config import Recipe
from kdiqa.errors import ConfigError
from kdiqa.io import atomic_path

TEACHER_PRESETS = ("tiny", "sd15", "sd21")
TEACHER_CHOICES_HELP = "none, tiny, sd15, sd21 (DP-IQA with random weights), trained (the recipe's fitted teacher) or a saved teacher folder"
# options that belong to one particular backbone and cannot follow a swapped-in one
_BACKBONE_SPECIFIC = ("pretrained", "out_indices")
CPU_MEMORY_METHOD = "cpu: weights + input + peak live tensor storages (counted per op; no workspaces)"
CUDA_MEMORY_METHOD = "cuda: torch.cuda.max_memory_allocated"


# --------------------------------------------------------------------------- measurements
def count_flops(model: nn.Module, size: int, device: str | torch.device = "cpu") -> int:
    """FLOPs of one batch-1 forward at ``size``² (2 per multiply-add; see the module docstring)."""
    images = torch.rand(1, 3, size, size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(images)
    return int(counter.get_total_flops())


class LiveTensorBytes(TorchDispatchMode):
    """Track the bytes of tensor storages created under this mode and still alive; keep the peak.

    Storages that existed before (weights, buffers, the input) are passed as ``known`` and never counted:
    an op may return a view of them (a transposed weight) without allocating anything.
    """

    def __init__(self, known: Sequence[torch.Tensor] = ()):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors referring to it]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.known:
            return
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [storage.nbytes(), 1]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]


def tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def peak_memory(model: nn.Module, images: torch.Tensor) -> tuple[int, str]:
    """Peak bytes during one inference forward on ``images`` (weights included), and how it was measured."""
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        with torch.inference_mode():
            model(images)
        torch.cuda.synchronize(images.device)
        return int(torch.cuda.max_memory_allocated(images.device)), CUDA_MEMORY_METHOD
    known = [*model.parameters(), *model.buffers(), images]
    tracker = LiveTensorBytes(known)
    with torch.inference_mode(), tracker:
        model(images)
    base = tensor_bytes(model) + images.numel() * images.element_size()
    return base + tracker.peak, CPU_MEMORY_METHOD


def time_interleaved(
    calls: dict[str, Callable[[], Any]], repeats: dict[str, int], warmup: dict[str, int], sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Seconds per call of each named callable, timed in rounds that visit every callable in turn.

    Each round reverses the previous round's order, so a slow spell of the machine does not always fall
    on the same model; a callable drops out of the rounds once it has its ``repeats`` timings.
    """
    for name, call in calls.items():
        for _ in range(warmup.get(name, 0)):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(max(repeats.values(), default=0)):
        for name in order if r % 2 == 0 else reversed(order):
            if len(times[name]) >= repeats[name]:
                continue
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), defined for a single value too."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --------------------------------------------------------------------------- rows
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


# --------------------------------------------------------------------------- building the models
def _student_options(recipe: Recipe, backbone: str) -> dict[str, Any]:
    """The recipe's student options with ``backbone`` swapped in (options tied to the old one dropped)."""
    options = dict(recipe.student.options) if recipe.student.name == "timm" else {}
    if options.get("backbone") != backbone:
        for key in _BACKBONE_SPECIFIC:
            options.pop(key, None)
    options["backbone"] = backbone
    options["image_size"] = recipe.views.size
    return options


def registered_student(name: str) -> bool:
    """A student registered under its own name (e.g. ``dpiqa_official``) rather than a timm backbone."""
    from kdiqa.registry import STUDENTS

    return name != "timm" and name in STUDENTS


def bench_student(recipe: Recipe, backbone: str) -> tuple[nn.Module, str]:
    """A random-weight student of the recipe's kind on ``backbone``: backbone + score head.

    Projectors only map features onto a teacher's during training, so none are built here; the
    ``official_mlp`` head reads a projected teacher map, so it is replaced by the pooled-MLP head.
    A registered student name (``dpiqa_official``) is built as it is, with its own projector and head.
    """
    from kdiqa.registry import STUDENTS

    if registered_student(backbone):
        return STUDENTS.build(backbone, image_size=recipe.views.size).eval(), ""
    options, note = _student_options(recipe, backbone), ""
    options.pop("projectors", None)
    if options.get("head") == "official_mlp":
        options["head"] = "pooled_mlp"
        note = "official_mlp head timed as pooled_mlp (it needs teacher-shaped projectors)"
    return STUDENTS.build("timm", **options).eval(), note


def check_backbones(backbones: Sequence[str]) -> None:
    """Fail in one line before anything slow runs if a name is not a timm model."""
    from kdiqa.students.taps import create_backbone

    if not backbones:
        raise ConfigError("bench --students: name at least one timm backbone, e.g. --students efficientnet_b0,mobilenetv3_large_100")
    for name in backbones:
        if not registered_student(name):
            create_backbone(name)  # raises ConfigError with close matches


def bench_teacher(spec: str, recipe: Recipe, run_dir: Path) -> tuple[nn.Module, str, str, dict[str, float], str]:
    """(teacher, row name, backbone label, test metrics, note) for ``--teacher`` (see TEACHER_CHOICES_HELP)."""
    from kdiqa.registry import TEACHERS
    from kdiqa.teacher import load_teacher

    if spec in TEACHER_PRESETS:
        torch.manual_seed(0)
        teacher = TEACHERS.build("dpiqa", preset=spec)
        return teacher.eval(), f"teacher dpiqa {spec} (random weights)", f"dpiqa {spec}", {}, ""
    metrics: dict[str, float] = {}
    if spec == "trained":
        from kdiqa.stages import trained_teacher_path

        path = trained_teacher_path(recipe, run_dir)
        metrics = _test_metrics(run_dir / "metrics.json", "teacher") if not recipe.teacher.checkpoint else {}
    else:
        path = Path(spec)
    from kdiqa.distill.stages import _require_model

    teacher = load_teacher(_require_model(path, "kdiqa fit-teacher"))
    name = f"teacher {teacher.name} ({'trained' if spec == 'trained' else path.name})"
    note = "; ".join(n for n in (f"loaded from {path}", getattr(teacher, "bench_note", "")) if n)  # e.g. onnx: not counted
    return teacher.eval(), name, str(teacher.name), metrics, note


def _test_metrics(path: Path, key: str) -> dict[str, float]:
    import json

    if not path.is_file():
        return {}
    test = json.loads(path.read_text()).get(key, {}).get("test", {})
    return {k: float(test[k]) for k in ("srcc", "plcc") if k in test}


def teacher_size(teacher: nn.Module, size: int) -> tuple[int, str]:
    """The nearest input side the teacher accepts (DP-IQA needs multiples of its VAE × U-Net stride)."""
    multiple = int(getattr(teacher, "input_multiple", 1))
    fitted = max(multiple, math.ceil(size / multiple) * multiple)
    return fitted, "" if fitted == size else f"timed at {fitted} px (sides must be multiples of {multiple})"


def distill_student(recipe: Recipe, run_dir: Path, backbone: str) -> tuple[nn.Module, dict[str, float]]:
    """Distil ``backbone`` from the recipe's (complete) cache with the recipe's schedule; test metrics.

    Each student gets its own folder ``<run>/bench/<backbone>`` (checkpoints, metrics.json, the saved
    student) and reads the shared cache; targets always come from the cache, never the teacher online.
    """
    from kdiqa import load_student
    from kdiqa.distill.stages import KD, STUDENTS_DIR, cache_path, stage_distill
    from kdiqa.run import prepare_run
    from kdiqa.stages import trained_teacher_path

    sub = copy.deepcopy(recipe)
    options = _student_options(recipe, backbone)
    options.pop("image_size")  # build_student sets it from views.size
    sub.student.name = "timm"
    sub.student.options = options
    if registered_student(backbone):
        sub.student.name, sub.student.options = backbone, {}
    sub.cache.path = str(cache_path(recipe, run_dir).resolve())
    # the teacher the cache is checked against is the recipe's, not one in the student's own folder
    sub.teacher.checkpoint = str(trained_teacher_path(recipe, run_dir).resolve())
    sub.distill.source = "cache"
    sub.out = str(run_dir / "bench" / backbone)
    sub_dir = prepare_run(sub)
    summary = stage_distill(sub, sub_dir)
    test = summary.get("test", {})
    metrics = {k: float(test[k]) for k in ("srcc", "plcc") if k in test}
    return load_student(sub_dir / STUDENTS_DIR / KD).eval(), metrics


# --------------------------------------------------------------------------- the bench
def run_bench(
    recipe: Recipe,
    run_dir: Path,
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
    from kdiqa.cache import require_complete
    from kdiqa.distill.stages import cache_path

    for name, value in (("--repeats", repeats), ("--teacher-repeats", teacher_repeats), ("--batch", batch), ("--teacher-batch", teacher_batch)):
        if value < 1:
            raise ConfigError(f"bench {name}: must be >= 1, got {value}")
    if warmup < 0:
        raise ConfigError(f"bench --warmup: must be >= 0, got {warmup}")
    students = list(dict.fromkeys(students))
    check_backbones(students)
    if distill:
        require_complete(cache_path(recipe, run_dir))  # one line saying how to build or finish it
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = recipe.views.size

    entries: list[_Entry] = []
    for backbone in students:
        if distill:
            say(f"== distilling {backbone} from {cache_path(recipe, run_dir)}")
            model, metrics = distill_student(recipe, run_dir, backbone)
            entry = _Entry(f"KD student {backbone}", "student", backbone, model, size, batch, repeats, warmup, metrics=metrics,
                           note="timed as saved after distillation (its projectors run in the forward too)")
        else:
            model, note = bench_student(recipe, backbone)
            entry = _Entry(backbone, "student", backbone, model, size, batch, repeats, warmup, note=note)
        entries.append(entry)
    if teacher != "none":
        say(f"== building teacher {teacher}")
        model, name, label, metrics, note = bench_teacher(teacher, recipe, run_dir)
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
            calls[key], reps[key], warm[key] = _forward(e.model, images), e.repeats, e.warmup
    say(f"== timing {len(entries)} models in interleaved rounds")
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    times = time_interleaved(calls, reps, warm, sync)

    rows = []
    for e in entries:
        t1, tb = times[f"{e.row_name}|1"], times[f"{e.row_name}|{e.batch}"]
        mem, method = memory[e.row_name]
        rows.append(BenchRow(
            model=e.row_name, kind=e.kind, backbone=e.backbone, image_size=e.size,
            params=sum(p.numel() for p in e.model.parameters()), gflops=e.flops / 1e9,
            latency_ms=1000 * statistics.median(t1), latency_p10_ms=1000 * percentile(t1, 10),
            latency_p90_ms=1000 * percentile(t1, 90), latency_repeats=len(t1), throughput_batch=e.batch,
            throughput_img_s=e.batch / statistics.median(tb), throughput_p10_img_s=e.batch / percentile(tb, 90),
            throughput_p90_img_s=e.batch / percentile(tb, 10), throughput_repeats=len(tb),
            peak_memory_mb=mem / 2**20, memory_method=method, srcc=e.metrics.get("srcc", math.nan),
            plcc=e.metrics.get("plcc", math.nan), device=device, threads=torch.get_num_threads(), note=e.note,
        ))
    return rows


def _forward(model: nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    def call() -> Any:
        with torch.inference_mode():
            return model(images)

    return call


# --------------------------------------------------------------------------- output
def machine_context() -> dict[str, str]:
    """What a reader needs to judge the times: CPU, load, versions, threads, date."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "gpu": gpu,
        "load average": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
    }


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path, mode


def write_bench(run_dir: Path, rows: Sequence[BenchRow], recipe_name: str, context: dict[str, str] | None = None) -> str:
    """Write bench.csv, bench.md and bench_pareto.png into ``run_dir``; return the markdown table."""
    context = context or machine_context()
    write_csv(run_dir / "bench.csv", rows)
    plot, mode = plot_pareto(rows, run_dir / "bench_pareto.png")
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
    with atomic_path(run_dir / "bench.md") as tmp:
        tmp.write_text("\n".join(lines))
    return table
