"""A run folder: one per command, holding the resolved recipe, logs, checkpoints and metrics."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from kdiqa.config import Recipe, save_recipe
from kdiqa.io import write_error, write_json

METRICS_FILE = "metrics.json"


def seed_stage(recipe: Recipe) -> None:
    """Reseed every RNG from ``recipe.seed`` at the start of a training stage.

    Why: ``kdiqa run`` chains stages in one process, so without this a stage's initial weights and
    data order would depend on how much randomness the stages before it drew. Then the label-only
    baseline would change whenever the teacher changed, and it would not start from the same weights
    as the KD student it is compared with.
    """
    pl.seed_everything(recipe.seed, workers=True, verbose=False)


def prepare_run(recipe: Recipe) -> Path:
    """Create the run folder, save the resolved recipe into it and seed every RNG."""
    run_dir = Path(recipe.out)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(run_dir, "the run folder", exc) from None
    save_recipe(recipe, run_dir / "recipe.yaml")
    seed_stage(recipe)
    if recipe.threads is not None:
        import torch

        torch.set_num_threads(max(1, recipe.threads))
    return run_dir


def update_metrics(run_dir: Path, key: str, value: Any) -> dict[str, Any]:
    """Merge one stage's results into ``metrics.json`` (written atomically)."""
    path = run_dir / METRICS_FILE
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics[key] = value
    write_json(path, metrics, what="the run's metrics")
    return metrics
