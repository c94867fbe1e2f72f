"""A run folder: one per command, holding the resolved recipe, logs, checkpoints, models and metrics.

:class:`RunDir` names every path in it, once; every stage, the trainer, the report and the bench ask
it where things go, so a file's name is spelled in one place. A run folder is laid out as::

    recipe.yaml  data.json  metrics.json (.metrics.lock)  predictions/<key>.json  report.md  plots/<name>.png
    teacher/  students/<key>/  cache/teacher.h5  checkpoints/<stage>/  logs/<stage>/  tb/<stage>/
    bench.csv  bench.md  bench_pareto.png  bench/<backbone>/   (kdiqa bench)

The teacher folder is ``teacher.checkpoint`` instead when the recipe gives one, and the cache file is
``cache.path`` when the recipe gives one.
"""
from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from filelock import FileLock

from kdiqa.config import Recipe, save_recipe
from kdiqa.config.loader import resolve_packaged_path
from kdiqa.io import write_error, write_json


class RunDir:
    """Every path of one run folder. ``teacher_checkpoint`` and ``cache_file`` are the recipe's
    ``teacher.checkpoint`` and ``cache.path`` (None: the run folder's own)."""

    LOGS, TENSORBOARD = "logs", "tb"  # Lightning's loggers write <root>/<LOGS or TENSORBOARD>/<stage>/

    def __init__(self, root: str | Path, teacher_checkpoint: str | None = None, cache_file: str | None = None):
        self.root = root = Path(root)
        self.recipe = root / "recipe.yaml"
        self.data_summary = root / "data.json"
        self.metrics = root / "metrics.json"
        self.metrics_lock = root / ".metrics.lock"
        self.report = root / "report.md"
        self.bench_csv = root / "bench.csv"
        self.bench_md = root / "bench.md"
        self.bench_plot = root / "bench_pareto.png"
        # the teacher: a shipped, released or earlier one if the recipe names it, else this run's fitted one
        self.teacher = resolve_packaged_path(teacher_checkpoint) if teacher_checkpoint else root / "teacher"
        self.cache = Path(cache_file) if cache_file else root / "cache" / "teacher.h5"

    @classmethod
    def of(cls, recipe: Recipe) -> RunDir:
        """The run folder a recipe names (``out``), with its teacher and cache."""
        return cls(recipe.out, recipe.teacher.checkpoint or None, recipe.cache.path or None)

    def student(self, key: str) -> Path:
        return self.root / "students" / key

    def predictions(self, key: str) -> Path:
        return self.root / "predictions" / f"{key}.json"

    def checkpoints(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    def latest_checkpoint(self, stage: str) -> Path:
        """The checkpoint an interrupted fit resumes from (:class:`kdiqa.checkpoints.LatestCheckpoint`)."""
        return self.checkpoints(stage) / "latest.ckpt"

    def plot(self, name: str) -> Path:
        return self.root / "plots" / f"{name}.png"

    def bench_run(self, backbone: str) -> Path:
        """The run folder of one student ``kdiqa bench --distill`` distils."""
        return self.root / "bench" / backbone

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}

    def update_metrics(self, key: str, value: Any) -> dict[str, Any]:
        """Merge one stage's results into ``metrics.json`` (written atomically), under a lock: stages that
        run side by side (:mod:`kdiqa.stages.side_by_side`) would otherwise each drop the other's entry."""
        try:
            with FileLock(self.metrics_lock):
                metrics = self.read_metrics()
                metrics[key] = value
                write_json(self.metrics, metrics, what="the run's metrics")
        except OSError as exc:  # the lock file could not be made: a read-only or full disk
            raise write_error(self.metrics, "the run's metrics", exc) from None
        return metrics


def seed_stage(recipe: Recipe) -> None:
    """Reseed every RNG from ``recipe.seed`` at the start of a training stage.

    Why: ``kdiqa run`` chains stages in one process, so without this a stage's initial weights and
    data order would depend on how much randomness the stages before it drew. Then the label-only
    baseline would change whenever the teacher changed, and it would not start from the same weights
    as the KD student it is compared with.
    """
    pl.seed_everything(recipe.seed, workers=True, verbose=False)


@contextlib.contextmanager
def teacher_threads(recipe: Recipe) -> Iterator[None]:
    """Run the block on ``teacher.threads`` torch CPU threads (if set), then restore the count."""
    before = torch.get_num_threads()
    if recipe.teacher.threads is not None:
        torch.set_num_threads(recipe.teacher.threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepare_run(recipe: Recipe) -> RunDir:
    """Create the run folder, save the resolved recipe into it and seed every RNG."""
    run = RunDir.of(recipe)
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(run.root, "the run folder", exc) from None
    save_recipe(recipe, run.recipe)
    seed_stage(recipe)
    use_recipe_threads(recipe)
    return run


def use_recipe_threads(recipe: Recipe) -> None:
    """torch CPU threads as the recipe's ``threads`` says (null: torch's default)."""
    if recipe.threads is not None:
        torch.set_num_threads(max(1, recipe.threads))
