"""Does distillation help? KD student vs label-only student, same budget, several seeds.

Reuses a finished run's teacher and cache (by default the quickstart's), trains both students once per
seed in fresh run folders, and prints the test SRCC/PLCC of each with the median and spread, plus the
per-seed difference. Example:

    .venv/bin/python benchmarks/kd_gain.py --run runs/quickstart --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from kdiqa.config import load_recipe
from kdiqa.distill.stages import stage_baseline, stage_distill
from kdiqa.run import prepare_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--run", default="runs/quickstart", help="a finished run folder with teacher/ and cache/teacher.h5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. distill.fit.trainer.max_epochs=2")
    args = parser.parse_args()

    run = Path(args.run)
    rows = []
    for seed in args.seeds:
        out = run / "kd_gain" / f"seed{seed}"
        recipe = load_recipe(
            args.recipe,
            [*args.overrides, f"seed={seed}", f"out={out}", f"teacher.checkpoint={run / 'teacher'}",
             f"cache.path={run / 'cache' / 'teacher.h5'}", "trainer.progress_bar=false"],
        )
        run_dir = prepare_run(recipe)
        started = time.perf_counter()
        kd = stage_distill(recipe, run_dir)
        kd_seconds = time.perf_counter() - started
        started = time.perf_counter()
        base = stage_baseline(recipe, run_dir)
        base_seconds = time.perf_counter() - started
        rows.append({"seed": seed, "kd": kd["test"], "label_only": base["test"], "kd_s": kd_seconds, "label_only_s": base_seconds})
        print(f"seed {seed}: KD SRCC {kd['test']['srcc']:.4f} ({kd_seconds:.0f} s), label-only SRCC {base['test']['srcc']:.4f} ({base_seconds:.0f} s)", flush=True)

    def stats(key: str, metric: str) -> str:
        values = [r[key][metric] for r in rows]
        return f"{statistics.median(values):.4f} (min {min(values):.4f}, max {max(values):.4f})"

    gains = [r["kd"]["srcc"] - r["label_only"]["srcc"] for r in rows]
    print()
    print("| student | test SRCC median (range) | test PLCC median (range) | seconds per run |")
    print("|---|---|---|---|")
    for key, label in (("kd", "KD (labels + cached teacher)"), ("label_only", "label-only")):
        seconds = statistics.median(r[f"{key}_s"] for r in rows)
        print(f"| {label} | {stats(key, 'srcc')} | {stats(key, 'plcc')} | {seconds:.0f} |")
    print(f"\nKD − label-only SRCC per seed: {', '.join(f'{g:+.4f}' for g in gains)}; median {statistics.median(gains):+.4f} over {len(rows)} seeds")
    (run / "kd_gain" / "summary.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
