"""The distill and baseline stages: the same student trained on labels + teacher targets (KD), and
on labels only (what KD is measured against).

Both build the student the same way (one projector per feature pair, shaped like the teacher's
targets), fit it with the same schedule (``distill.fit``) and save and evaluate it the same way.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kdiqa.cache import CachedViews, teacher_targets
from kdiqa.checkpoints import start_epoch
from kdiqa.config import Recipe
from kdiqa.data.datamodule import IQADataModule, IQADataset, make_sampler
from kdiqa.data.mix import MixedSampler
from kdiqa.data.unlabelled import is_labelled
from kdiqa.distill.cache_check import recipe_fingerprints
from kdiqa.distill.module import DistillModule
from kdiqa.evaluate import record_evaluation
from kdiqa.fit import MOSFitModule
from kdiqa.models import require_model
from kdiqa.run import RunDir, seed_stage
from kdiqa.stages.data import data_module
from kdiqa.students.base import build_student
from kdiqa.teachers.base import Teacher
from kdiqa.trainer import fit_validation_best, merge_trainer

KD, BASELINE = "kd", "label_only"  # students/<key>, and metrics.json's student_<key>


class _WithTrainSet(IQADataModule):
    """The recipe's val/test data with a different training set (cached views, or labelled + pool).

    ``labelled`` (per training item) and ``fraction`` ask for batches with a fixed share of pool items
    (``distill.unlabelled_fraction``, :class:`kdiqa.data.mix.MixedSampler`).
    """

    def __init__(self, base: IQADataModule, train_set: Dataset, labelled: np.ndarray | None = None,
                 fraction: float | None = None):
        super().__init__(base.data_cfg, base.views)
        self.dataset, self.splits, self._pool = base.dataset, base.splits, base._pool  # already loaded and split
        self.train_set = train_set
        self.labelled, self.fraction = labelled, fraction

    def train_dataloader(self) -> DataLoader:
        if self.fraction is None or self.labelled is None:
            return self.training_loader(self.train_set)
        cfg, trainer = self.data_cfg, self.trainer
        distributed = trainer is not None and trainer.world_size > 1
        sampler = MixedSampler(
            self.labelled, cfg.batch_size, self.fraction, seed=torch.initial_seed() % 2**31, shuffle=cfg.shuffle,
            num_replicas=trainer.world_size if distributed else 1, rank=trainer.global_rank if distributed else 0,
        )
        sampler.set_epoch(start_epoch(trainer))  # a resumed fit's first epoch is not 0
        # workers not persistent, as in training_loader: their random state must come from a checkpoint
        return DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)


def open_cache(recipe: Recipe, run: RunDir, samples: list[Any], **options: Any) -> CachedViews:
    """The recipe's cache, refused in one line when any of its fingerprints does not match the recipe
    (:mod:`kdiqa.distill.cache_check`)."""
    return CachedViews(run.cache, samples, make_sampler(recipe.views, train=True),
                       lambda meta: recipe_fingerprints(recipe, run.teacher, meta), **options)


def _target_shapes(recipe: Recipe, run: RunDir, dm: IQADataModule) -> dict[str, tuple[int, ...]]:
    """Shapes of the teacher targets the student's projectors map to: from the cache, else the teacher."""
    if not recipe.distill.features:
        return {}
    if run.cache.is_file():
        return CachedViews(run.cache, dm.distill_samples(), make_sampler(recipe.views, train=True)).feature_shapes()
    teacher = Teacher.from_pretrained(require_model(run.teacher, "kdiqa fit-teacher"))
    teacher.eval()
    with torch.no_grad():
        out = teacher(torch.zeros(1, 3, recipe.views.size, recipe.views.size))
    names = [p.target for p in recipe.distill.features]
    return {k: tuple(v.shape[1:]) for k, v in teacher_targets(out, names, recipe.cache.pool, "distill.features").items()}


def fit_student(recipe: Recipe, run: RunDir, key: str, module: Any, dm: IQADataModule) -> dict[str, Any]:
    """Fit, keep the validation-best weights, save the student, evaluate val and test once."""
    trainer_cfg = merge_trainer(recipe.trainer, recipe.distill.fit.trainer)
    best = fit_validation_best(module, dm, trainer_cfg, run, f"student_{key}", recipe.distill.fit.monitor, "distill.fit.trainer")
    module.model.save_pretrained(run.student(key))
    return record_evaluation(module.model, dm, run, f"student_{key}", best)


def stage_distill(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    """Train the student on labels + teacher targets, from the cache or with the teacher online.

    A cache that does not match the recipe (teacher, dataset, views, targets) is refused.
    """
    seed_stage(recipe)
    dm = data_module(recipe, recipe.distill.fit)
    dm.setup()
    fraction = recipe.distill.unlabelled_fraction  # set only with a pool (the schema's check_across)
    teacher = None
    if recipe.distill.source == "cache":
        train_set = open_cache(recipe, run, dm.distill_samples(), views=recipe.cache.epoch_views,
                               features=sorted({p.target for p in recipe.distill.features}))
        student = build_student(recipe.student, recipe.views.size, recipe.distill.features, train_set.feature_shapes())
        dm = _WithTrainSet(dm, train_set, train_set.labelled_items(), fraction)
    else:
        teacher = Teacher.from_pretrained(require_model(run.teacher, "kdiqa fit-teacher"))
        student = build_student(recipe.student, recipe.views.size, recipe.distill.features, _target_shapes(recipe, run, dm))
        if dm.pool() is not None:  # labelled training images + the pool images that decode
            samples = dm.distill_samples(check_pool=True)
            labelled = np.array([is_labelled(s) for s in samples], dtype=bool)
            dm = _WithTrainSet(dm, IQADataset(samples, make_sampler(recipe.views, train=True)), labelled, fraction)
    module = DistillModule(student, recipe.distill.fit, recipe.distill, teacher=teacher, pool=recipe.cache.pool)
    return fit_student(recipe, run, KD, module, dm)


def stage_baseline(recipe: Recipe, run: RunDir) -> dict[str, Any]:
    """The same student (projectors and head included) trained on labels only: what KD is measured against.

    It trains on the labelled training split alone: the unlabelled pool has nothing to offer it.
    """
    seed_stage(recipe)
    dm = data_module(recipe, recipe.distill.fit)
    dm.setup()
    student = build_student(recipe.student, recipe.views.size, recipe.distill.features, _target_shapes(recipe, run, dm))
    return fit_student(recipe, run, BASELINE, MOSFitModule(student, recipe.distill.fit), dm)
