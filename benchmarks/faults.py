"""Fault figures for the README: kill trials, bad inputs, full disks, read-only folders.

Runs the fault-injection tests (tests/test_reliability.py) with more random kill trials than the
test suite's default, has them record every trial, and prints one table: for each kind of fault,
how many trials ran and how many ended as promised (the uninterrupted result after a rerun, or one
error line with exit 2 and nothing incomplete left behind). Example:

    .venv/bin/python benchmarks/faults.py --seeds 10

The full-disk and read-only cases on a tmpfs need ``mount`` (root); elsewhere they are skipped and
the table says so (a file-size limit still stands in for a full disk).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = [
    ("kill cache", "SIGKILL at random points of `kdiqa cache` (twice per trial), then a rerun"),
    ("kill distill", "SIGKILL at random points of `kdiqa distill` (twice per trial), then a rerun"),
    ("bad input", "bad recipes, overrides, CSVs, images, stale caches and paths"),
    ("disk full", "full disk (a small tmpfs) while caching, distilling, predicting; then a rerun"),
    ("file-size limit", "writes failing (RLIMIT_FSIZE) while caching, distilling"),
    ("read-only", "read-only output folder for cache, distill, predict"),
    ("impossible path", "output paths that cannot exist (/proc, under a file)"),
    ("corrupt checkpoint", "a torn latest.ckpt"),
    ("leftovers", "temporary files of killed writes"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="random kill trials per stage (default: 10)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "faults.json"
        env = {**os.environ, "KDIQA_FAULT_SEEDS": str(args.seeds), "KDIQA_FAULT_REPORT": str(report)}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_reliability.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        counts = json.loads(report.read_text()) if report.is_file() else {}
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"pytest tests/test_reliability.py with {args.seeds} kill seeds per stage: {summary} ({seconds:.0f} s)\n")
    print("| fault | trials | as promised | kills that hit a running process |")
    print("|---|---|---|---|")
    for kind, what in KINDS:
        run, passed = counts.get(f"{kind} run", 0), counts.get(f"{kind} passed", 0)
        kills = counts.get(f"{kind} kills", "") if kind.startswith("kill") else ""
        print(f"| {what} | {run} | {passed} | {kills} |")
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    if skipped:
        print("\nskipped here:\n" + "\n".join(skipped))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
