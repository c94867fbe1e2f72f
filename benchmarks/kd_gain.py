"""What does distillation buy? KD student vs label-only student over seeds, photograph folds and pool sizes.

The quickstart's one run is noisy (its test split is three photographs), so this repeats it:

- **seeds**: the student's initial weights and batch order (``seed``), on the quickstart's split;
- **folds**: other assignments of the six photographs the shipped teacher never saw to validation and
  test (one scene, one scientific image and one texture in each, as the default split has; fold 0 is
  the quickstart's). The training photographs stay the teacher's, so no fold lets the teacher's
  knowledge of a test photograph leak into a student: that is why folds do not rotate all 18;
- **pool sizes**: the unlabelled pool as a multiple of the labelled set (0 = the labelled crops only;
  the teacher's targets still cover them), the curve that shows what unlabelled images buy.

Every run is the quickstart recipe's own stages (eval of the teacher, cache, distill, baseline) in a
fresh run folder under ``--out``, with the same budget; the label-only student does not depend on
the pool, so it is trained once per (fold, seed). Prints per-run lines, then median and range tables;
writes ``summary.json`` and ``summary.md``. Each finished run leaves ``kd_gain_row.json`` in its folder, so an
interrupted benchmark resumes where it stopped, and disjoint parts can run as separate processes (one per
core) before a last invocation with every argument gathers them. Example (about an hour on 2 CPU cores):

    .venv/bin/python benchmarks/kd_gain.py --seeds 0 1 2 3 4 --folds 0 1 2 3 4 --pools 0 1 5 20 --pool-folds 0
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

from kdiqa.config import load_recipe
from kdiqa.console import setup_console
from kdiqa.data.mini import PHOTO_KINDS, load_photographs, split_photographs
from kdiqa.run import prepare_run
from kdiqa.stages import stage_baseline, stage_cache, stage_distill, stage_eval


def photograph_folds(seed: int = 0) -> list[dict[str, list[str]]]:
    """Every val/test assignment of the held-out photographs of the default split with one photograph of
    each kind on each side; the default split first."""
    default = split_photographs(list(load_photographs()), seed)
    held = default["val"] + default["test"]
    by_kind: dict[str, list[str]] = {}
    for name in sorted(held):
        by_kind.setdefault(PHOTO_KINDS.get(name, "other"), []).append(name)
    folds = [{"val": sorted(default["val"]), "test": sorted(default["test"])}]
    for choice in itertools.product(*(sorted(v) for _, v in sorted(by_kind.items()))):
        fold = {"val": sorted(choice), "test": sorted(set(held) - set(choice))}
        if fold not in folds:
            folds.append(fold)
    return folds


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f} – {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--out", default="runs/kd_gain")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds, on fold 0 at the recipe's pool")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="photograph folds, seed 0")
    parser.add_argument("--pools", type=float, nargs="+", default=[0, 1, 5, 20],
                        help="pool sizes as multiples of the labelled set, seed 0, on --pool-folds")
    parser.add_argument("--pool-folds", type=int, nargs="+", default=[0], help="the folds of the pool-size curve")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. distill.fit.trainer.max_steps=300")
    args = parser.parse_args()
    setup_console()  # the stages' Lightning chatter stays out of the benchmark's output, as in `kdiqa`

    base = load_recipe(args.recipe, args.overrides)
    n_labelled = int(base.data.options["n_train"])
    default_multiple = base.data.unlabelled.mini / n_labelled
    folds = photograph_folds(int(base.data.options.get("seed", 0)))
    out = Path(args.out)

    # (fold, seed, pool multiple) runs: seeds on fold 0 at the recipe's pool, pool sizes on every fold at seed 0
    plan = sorted({(0, s, default_multiple) for s in args.seeds}
                  | {(f, 0, default_multiple) for f in args.folds}
                  | {(f, 0, float(p)) for f in args.pool_folds for p in args.pools})
    baselines: dict[tuple[int, int], dict[str, Any]] = {}
    teachers: dict[int, dict[str, Any]] = {}
    rows = []
    for fold, seed, multiple in plan:
        pool = int(round(multiple * n_labelled))
        tag = f"fold{fold}-seed{seed}-pool{pool}"
        overrides = [*args.overrides, f"seed={seed}", f"out={out / tag}", "trainer.progress_bar=false",
                     f"data.root={out / 'data' / f'fold{fold}'}",
                     f"data.options.held_out={json.dumps(folds[fold])}",
                     f"data.unlabelled.mini={pool}"]
        done = out / tag / "kd_gain_row.json"
        if done.is_file():  # finished by an earlier invocation: the benchmark resumes where it stopped
            row = json.loads(done.read_text())
            teachers.setdefault(fold, row["teacher"])
            baselines.setdefault((fold, seed), row["label_only"])
            rows.append(row)
            print(f"{tag}: done earlier", flush=True)
            continue
        recipe = load_recipe(args.recipe, overrides)
        run = prepare_run(recipe)
        started = time.perf_counter()
        if fold not in teachers:
            teachers[fold] = stage_eval(recipe, run)["test"]
        stage_cache(recipe, run)
        kd = stage_distill(recipe, run)["test"]
        if (fold, seed) not in baselines:
            baselines[(fold, seed)] = stage_baseline(recipe, run)["test"]
        base_test = baselines[(fold, seed)]
        row = {"fold": fold, "seed": seed, "pool": pool, "pool_multiple": multiple, "photographs": folds[fold],
               "teacher": teachers[fold], "kd": kd, "label_only": base_test, "seconds": time.perf_counter() - started}
        rows.append(row)
        done.write_text(json.dumps(row, indent=2, default=float) + "\n")
        print(f"{tag}: teacher {teachers[fold]['srcc']:.4f}  KD {kd['srcc']:.4f}  label-only {base_test['srcc']:.4f}  "
              f"KD − label-only {kd['srcc'] - base_test['srcc']:+.4f}  ({row['seconds']:.0f} s)", flush=True)

    lines = _tables(rows, default_multiple)
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _tables(rows: list[dict[str, Any]], default_multiple: float) -> list[str]:
    lines = ["", "Test SRCC, median (range). KD − label-only is per run, then summarised.", ""]
    lines += ["| runs | n | teacher | KD student | label-only student | KD − label-only | KD ahead |", "|---|---|---|---|---|---|---|"]
    groups = {
        "seeds (fold 0)": [r for r in rows if r["fold"] == 0 and r["pool_multiple"] == default_multiple],
        "folds (seed 0)": [r for r in rows if r["seed"] == 0 and r["pool_multiple"] == default_multiple],
    }
    for name, group in groups.items():
        if not group:
            continue
        gains = [r["kd"]["srcc"] - r["label_only"]["srcc"] for r in group]
        lines.append(f"| {name} | {len(group)} | {_median_range([r['teacher']['srcc'] for r in group])} | "
                     f"{_median_range([r['kd']['srcc'] for r in group])} | {_median_range([r['label_only']['srcc'] for r in group])} | "
                     f"{_median_range(gains)} | {sum(g > 0 for g in gains)} of {len(gains)} |")
    lines += ["", "Pool size (seed 0; median over the pool folds):", "",
              "| pool (× labelled) | pool images | folds | KD student | KD − label-only |", "|---|---|---|---|---|"]
    for multiple in sorted({r["pool_multiple"] for r in rows}):
        group = [r for r in rows if r["seed"] == 0 and r["pool_multiple"] == multiple]
        gains = [r["kd"]["srcc"] - r["label_only"]["srcc"] for r in group]
        lines.append(f"| {multiple:g} | {group[0]['pool']} | {len(group)} | {_median_range([r['kd']['srcc'] for r in group])} | "
                     f"{_median_range(gains)} |")
    return lines


if __name__ == "__main__":
    main()
