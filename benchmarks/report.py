"""Run the benchmarks one after another and gather their printed figures into one markdown report.

    .venv/bin/python benchmarks/report.py [--out runs/benchmarks/REPORT.md] [--only cache_write,teacher_vs_student] [--quick]

Each benchmark runs in its own process, never two at once (they would slow each other down), and
its output goes into the report verbatim under the exact command, with the machine, load and date
above it. ``--quick`` passes smaller sizes and fewer repeats: for checking that everything runs,
not for quoting. A benchmark that fails is reported with its exit code and the end of its stderr,
and the others still run.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from kdiqa.measure import machine_context  # noqa: E402

# name: (what it measures, full arguments, quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "cache_write": ("cache write overhead: teacher forward + HDF5 writes vs forward alone", [],
                    ["--images", "64", "--repeats", "2", "--dpiqa-images", "8"]),
    "cache_read": ("cache read throughput vs the student's training throughput", [],
                   ["--images", "64", "--repeats", "2"]),
    "cache_vs_online": ("distillation epoch: cached vs teacher online vs label-only; SD-1.5 FLOP arithmetic", [],
                        ["--images", "96", "--rounds", "2"]),
    "teacher_vs_student": ("true-size DP-IQA teacher vs students, batch 1 (512² unless --size says otherwise)", [],
                           ["--size", "64", "--repeats", "3", "--teacher-repeats", "1"]),
    "export_latency": ("eager PyTorch vs TorchScript vs ONNX Runtime", [],
                       ["--repeats", "5", "--size", "64"]),
}


def run_one(name: str, arguments: list[str]) -> tuple[str, float, int, str]:
    """(stdout, seconds, exit code, stderr tail) of one benchmark script."""
    command = [sys.executable, str(HERE / f"{name}.py"), *arguments]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    tail = "\n".join(done.stderr.strip().splitlines()[-5:])
    # progress lines of the cache writer ("cache: 600/768 views (78%), ... 4 s left") are not figures
    out = "\n".join(line for line in done.stdout.splitlines() if not (line.startswith("cache: ") and " left" in line))
    return out, time.perf_counter() - start, done.returncode, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "benchmarks" / "REPORT.md"), help="(default: runs/benchmarks/REPORT.md)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run, not for quoting)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")

    context = machine_context()
    lines = ["# kdiqa benchmark report", "", "; ".join(f"{k}: {v}" for k, v in context.items()), ""]
    if args.quick:
        lines += ["**Quick run** (small sizes, few repeats): checks that the benchmarks run; do not quote these figures.", ""]
    for name in names:
        what, full, quick = BENCHMARKS[name]
        arguments = quick if args.quick else full
        print(f"== {name} {' '.join(arguments)}", flush=True)
        out, seconds, code, tail = run_one(name, arguments)
        command = " ".join([".venv/bin/python", f"benchmarks/{name}.py", *arguments])
        lines += [f"## {name}", "", what + ".", "", f"`{command}` — {seconds:.0f} s, exit code {code}", "", "```", out.rstrip(), "```", ""]
        if code != 0:
            lines += ["stderr (last lines):", "", "```", tail, "```", ""]
        print(out.rstrip() if code == 0 else f"failed ({code}): {tail}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
