"""The stages a recipe chains (``stages: [...]``) and the CLI runs one by one.

Each stage takes the resolved recipe and the run folder, writes its outputs there and returns
a small summary; later stages find earlier outputs in the same folder, so any stage can be rerun.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdiqa.config import Recipe
from kdiqa.config.loader import resolve_packaged_path
from kdiqa.config.schema import DataConfig, FitConfig
from kdiqa.data.datamodule import IQADataModule
from kdiqa.errors import ConfigError
from kdiqa.io import write_json
from kdiqa.registry import TEACHERS
from kdiqa.run import seed_stage, update_metrics
from kdiqa.teacher import Teacher, save_teacher

TEACHER_DIR = "teacher"


def stage_data(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    dm = IQADataModule(recipe.data, recipe.views)
    summary = dm.summary()
    write_json(run_dir / "data.json", summary)
    return summary


def data_for(data: DataConfig, fit: FitConfig) -> DataConfig:
    """The data section with a stage's own training batch size (teachers and students differ)."""
    return data if fit.batch_size is None else dataclasses.replace(data, batch_size=fit.batch_size)


def trained_teacher_path(recipe: Recipe, run_dir: Path) -> Path:
    """Where the teacher comes from: ``teacher.checkpoint`` if given, else this run's fitted one."""
    if recipe.teacher.checkpoint:
        return resolve_packaged_path(recipe.teacher.checkpoint)
    return run_dir / TEACHER_DIR


def stage_fit_teacher(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    from kdiqa.evaluate import record_evaluation
    from kdiqa.fit import MOSFitModule
    from kdiqa.trainer import fit_validation_best, merge_trainer

    if recipe.teacher.checkpoint:
        return {"skipped": f"teacher.checkpoint is set ({recipe.teacher.checkpoint})"}
    seed_stage(recipe)
    dm = IQADataModule(data_for(recipe.data, recipe.teacher.fit), recipe.views)
    dm.setup()
    teacher: Teacher = TEACHERS.build(recipe.teacher.name, **recipe.teacher.options)
    if not getattr(teacher, "needs_fitting", True):  # trained elsewhere (pyiqa, onnx): saved as built
        save_teacher(teacher, run_dir / TEACHER_DIR)
        return {"saved": str(run_dir / TEACHER_DIR), "fitted": False}
    teacher.prepare(dm.train_dataloader())
    module = MOSFitModule(teacher, recipe.teacher.fit)
    trainer_cfg = merge_trainer(recipe.trainer, recipe.teacher.fit.trainer, "teacher.fit.trainer")
    best = fit_validation_best(module, dm, trainer_cfg, run_dir, "teacher", recipe.teacher.fit.monitor, "teacher.fit.trainer")
    save_teacher(teacher, run_dir / TEACHER_DIR)
    return record_evaluation(teacher, dm, run_dir, "teacher", best)


def stage_eval(recipe: Recipe, run_dir: Path, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a saved model folder (teacher or student).

    Without ``checkpoint``: the run's teacher (fitted here, or given by ``teacher.checkpoint`` as a
    shipped or released one), recorded as ``teacher`` in metrics.json with its predictions, which is
    what the report shows. With one: every split, recorded as ``eval:<folder name>``.
    """
    from kdiqa.distill.stages import load_model
    from kdiqa.evaluate import evaluate_splits, record_evaluation

    path = Path(checkpoint) if checkpoint else trained_teacher_path(recipe, run_dir)
    model = load_model(path)
    dm = IQADataModule(recipe.data, recipe.views)
    if checkpoint is None:
        return record_evaluation(model, dm, run_dir, "teacher", str(path))
    results = evaluate_splits(model, dm, ("train", "val", "test"))
    summary = {split: r["metrics"] for split, r in results.items()}
    update_metrics(run_dir, f"eval:{path.name}", summary)
    return summary


def _lazy(module: str, name: str) -> Callable[..., dict[str, Any]]:
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    run.__name__ = name
    return run


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "data": stage_data,
    "fit_teacher": stage_fit_teacher,
    "cache": _lazy("kdiqa.distill.stages", "stage_cache"),
    "distill": _lazy("kdiqa.distill.stages", "stage_distill"),
    "baseline": _lazy("kdiqa.distill.stages", "stage_baseline"),
    "report": _lazy("kdiqa.distill.stages", "stage_report"),
    "eval": stage_eval,
}


def check_stages(names: list[str]) -> None:
    for name in names:
        if name not in STAGES:
            import difflib

            close = difflib.get_close_matches(name, list(STAGES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"stages: unknown stage {name!r}{hint} (known: {', '.join(STAGES)})")
