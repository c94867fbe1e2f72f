"""The eval stage: score a saved model folder (teacher or student) on the recipe's splits."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kdiqa.config import Recipe
from kdiqa.evaluate import evaluate_splits, record_evaluation
from kdiqa.models import load_model
from kdiqa.run import RunDir, teacher_threads
from kdiqa.stages.data import data_module


def stage_eval(recipe: Recipe, run: RunDir, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a saved model folder (teacher or student).

    Without ``checkpoint``: the run's teacher (fitted here, or given by ``teacher.checkpoint`` as a
    shipped or released one), recorded as ``teacher`` in metrics.json with its predictions, which is
    what the report shows. With one: every split, recorded as ``eval:<folder name>``.
    """
    path = Path(checkpoint) if checkpoint else run.teacher
    model = load_model(path)
    dm = data_module(recipe)
    if checkpoint is None:
        with teacher_threads(recipe):
            return record_evaluation(model, dm, run, "teacher", str(path))
    results = evaluate_splits(model, dm, ("train", "val", "test"))
    summary = {split: r["metrics"] for split, r in results.items()}
    run.update_metrics(f"eval:{path.name}", summary)
    return summary
