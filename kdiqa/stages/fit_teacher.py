"""The fit_teacher stage: train the recipe's teacher on MOS, keep its validation-best weights."""
from __future__ import annotations

from typing import Any

from kdiqa.config import Recipe
from kdiqa.evaluate import record_evaluation
from kdiqa.fit import MOSFitModule
from kdiqa.registry import TEACHERS
from kdiqa.run import RunDir, seed_stage
from kdiqa.stages.data import data_module
from kdiqa.teachers.base import Teacher
from kdiqa.trainer import fit_validation_best, merge_trainer


def stage_fit_teacher(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    if recipe.teacher.checkpoint:
        return {"skipped": f"teacher.checkpoint is set ({recipe.teacher.checkpoint})"}
    seed_stage(recipe)
    dm = data_module(recipe, recipe.teacher.fit)
    dm.setup()
    teacher: Teacher = TEACHERS.build(recipe.teacher.name, **recipe.teacher.options)
    if not teacher.needs_fitting:  # trained elsewhere (pyiqa, onnx): saved as built
        teacher.save_pretrained(run.teacher)
        return {"saved": str(run.teacher), "fitted": False}
    teacher.prepare(dm.train_dataloader())
    module = MOSFitModule(teacher, recipe.teacher.fit)
    trainer_cfg = merge_trainer(recipe.trainer, recipe.teacher.fit.trainer)
    best = fit_validation_best(module, dm, trainer_cfg, run, "teacher", recipe.teacher.fit.monitor, "teacher.fit.trainer")
    teacher.save_pretrained(run.teacher)
    return record_evaluation(teacher, dm, run, "teacher", best)
