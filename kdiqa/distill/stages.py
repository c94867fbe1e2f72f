"""The cache, distill, baseline and report stages: what ``kdiqa cache/distill/run`` executes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdiqa.config import Recipe
from kdiqa.data.datamodule import IQADataModule, IQADataset, make_sampler
from kdiqa.data.unlabelled import is_labelled
from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.io import read_json
from kdiqa.registry import STUDENTS
from kdiqa.run import seed_stage

STUDENTS_DIR = "students"
KD, BASELINE = "kd", "label_only"
MODEL_CONFIG = "config.json"


def cache_path(recipe: Recipe, run_dir: Path) -> Path:
    return Path(recipe.cache.path) if recipe.cache.path else run_dir / "cache" / "teacher.h5"


def stage_cache(recipe: Recipe, run_dir: Path, shard: tuple[int, int] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the trained teacher once per (training image, view) and store its targets in HDF5.

    The training images are the labelled training split, then the unlabelled pool if the recipe has one.
    """
    from kdiqa.cache import build_cache
    from kdiqa.distill.cache_check import cache_settings
    from kdiqa.evaluate import default_device
    from kdiqa.stages import trained_teacher_path
    from kdiqa.teacher import load_teacher

    dm = IQADataModule(recipe.data, recipe.views)
    dm.setup()
    teacher = load_teacher(_require_model(trained_teacher_path(recipe, run_dir), "kdiqa fit-teacher"))
    c = recipe.cache
    settings = cache_settings(recipe)  # the same settings every reader checks the cache against
    return build_cache(
        teacher,
        dm.distill_samples(),
        settings.pop("sampler"),
        cache_path(recipe, run_dir),
        **settings,
        compression=c.compression,
        batch_size=c.batch_size,
        shard=shard,
        device=default_device(),
        num_workers=recipe.data.num_workers,
        force=force,
    )


def open_cache(recipe: Recipe, run_dir: Path, samples: list[Any], **options: Any) -> Any:
    """The recipe's cache as a :class:`~kdiqa.cache.CachedViews`, refused in one line when any of its
    fingerprints does not match the recipe (:mod:`kdiqa.distill.cache_check`)."""
    from kdiqa.cache import CachedViews
    from kdiqa.distill.cache_check import recipe_fingerprints
    from kdiqa.stages import trained_teacher_path

    teacher = trained_teacher_path(recipe, run_dir)
    return CachedViews(cache_path(recipe, run_dir), samples, make_sampler(recipe.views, train=True),
                       lambda meta: recipe_fingerprints(recipe, teacher, meta), **options)


def _require_model(path: Path, how: str) -> Path:
    if not (path / MODEL_CONFIG).is_file():
        raise CheckpointError(f"{path}: no saved model here (expected {MODEL_CONFIG}); run `{how}` first or pass --checkpoint")
    return path


def load_model(path: str | Path) -> nn.Module:
    """A saved teacher or student folder, whichever it holds."""
    from kdiqa import load_student
    from kdiqa.teacher import load_teacher

    path = _require_model(Path(path), "kdiqa fit-teacher / kdiqa distill")
    meta = read_json(path / MODEL_CONFIG)
    return load_teacher(path) if isinstance(meta, dict) and "teacher" in meta else load_student(path)


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
        from kdiqa.data.mix import MixedSampler

        cfg, trainer = self.data_cfg, self.trainer
        distributed = trainer is not None and trainer.world_size > 1
        sampler = MixedSampler(
            self.labelled, cfg.batch_size, self.fraction, seed=torch.initial_seed() % 2**31, shuffle=cfg.shuffle,
            num_replicas=trainer.world_size if distributed else 1, rank=trainer.global_rank if distributed else 0,
        )
        from kdiqa.checkpoints import start_epoch

        sampler.set_epoch(start_epoch(trainer))  # a resumed fit's first epoch is not 0
        # workers not persistent, as in training_loader: their random state must come from a checkpoint
        return DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers)


def build_student(recipe: Recipe, feature_shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """The recipe's student with one projector per feature pair, shaped like the teacher's targets."""
    options = dict(recipe.student.options)
    options.setdefault("image_size", recipe.views.size)
    projectors = []
    for pair in recipe.distill.features:
        if pair.target not in feature_shapes:
            raise CheckpointError(
                f"distill.features: the teacher targets hold no {pair.target!r} (they hold: {', '.join(feature_shapes) or 'none'}); "
                "add it to cache.features and rebuild the cache"
            )
        projectors.append({"tap": pair.tap, "target": pair.target, "shape": list(feature_shapes[pair.target]), "kind": pair.kind})
    if projectors:
        options["projectors"] = projectors
    return STUDENTS.build(recipe.student.name, **options)


def _online_shapes(recipe: Recipe, teacher: nn.Module) -> dict[str, tuple[int, ...]]:
    from kdiqa.distill.module import teacher_targets

    teacher.eval()
    with torch.no_grad():
        out = teacher(torch.zeros(1, 3, recipe.views.size, recipe.views.size))
    names = [p.target for p in recipe.distill.features]
    return {k: tuple(v.shape[1:]) for k, v in teacher_targets(out, names, recipe.cache.pool).items()}


def _fit_student(recipe: Recipe, run_dir: Path, key: str, module: Any, dm: IQADataModule) -> dict[str, Any]:
    """Fit, keep the validation-best weights, save the student, evaluate val and test once."""
    from kdiqa.evaluate import record_evaluation
    from kdiqa.trainer import fit_validation_best, merge_trainer
    from kdiqa.students.student import save_student

    trainer_cfg = merge_trainer(recipe.trainer, recipe.distill.fit.trainer, "distill.fit.trainer")
    best = fit_validation_best(module, dm, trainer_cfg, run_dir, f"student_{key}", recipe.distill.fit.monitor, "distill.fit.trainer")
    save_student(module.model, run_dir / STUDENTS_DIR / key)
    return record_evaluation(module.model, dm, run_dir, f"student_{key}", best)


def stage_distill(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """Train the student on labels + teacher targets, from the cache or with the teacher online.

    A cache that does not match the recipe (teacher, dataset, views, targets) is refused.
    """
    from kdiqa.distill.module import DistillModule
    from kdiqa.stages import data_for, trained_teacher_path
    from kdiqa.teacher import load_teacher

    seed_stage(recipe)
    dm = IQADataModule(data_for(recipe.data, recipe.distill.fit), recipe.views)
    dm.setup()
    fraction = recipe.distill.unlabelled_fraction
    if fraction is not None and dm.pool() is None:
        raise ConfigError("distill.unlabelled_fraction: set, but the recipe has no unlabelled pool (data.unlabelled)")
    teacher = None
    if recipe.distill.source == "cache":
        train_set = open_cache(recipe, run_dir, dm.distill_samples(), views=recipe.cache.epoch_views,
                               features=sorted({p.target for p in recipe.distill.features}))
        student = build_student(recipe, train_set.feature_shapes())
        dm = _WithTrainSet(dm, train_set, train_set.labelled_items(), fraction)
    else:
        teacher = load_teacher(_require_model(trained_teacher_path(recipe, run_dir), "kdiqa fit-teacher"))
        student = build_student(recipe, _target_shapes(recipe, run_dir, dm))
        if dm.pool() is not None:  # labelled training images + the pool images that decode
            samples = dm.distill_samples(check_pool=True)
            labelled = np.array([is_labelled(s) for s in samples], dtype=bool)
            dm = _WithTrainSet(dm, IQADataset(samples, make_sampler(recipe.views, train=True)), labelled, fraction)
    module = DistillModule(student, recipe.distill.fit, recipe.distill, teacher=teacher, pool=recipe.cache.pool)
    return _fit_student(recipe, run_dir, KD, module, dm)


def _target_shapes(recipe: Recipe, run_dir: Path, dm: IQADataModule) -> dict[str, tuple[int, ...]]:
    """Shapes of the teacher targets the student's projectors map to: from the cache, else the teacher."""
    from kdiqa.cache import CachedViews
    from kdiqa.stages import trained_teacher_path
    from kdiqa.teacher import load_teacher

    if not recipe.distill.features:
        return {}
    path = cache_path(recipe, run_dir)
    if path.is_file():
        return CachedViews(path, dm.distill_samples(), make_sampler(recipe.views, train=True)).feature_shapes()
    teacher = load_teacher(_require_model(trained_teacher_path(recipe, run_dir), "kdiqa fit-teacher"))
    return _online_shapes(recipe, teacher)


def stage_baseline(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """The same student (projectors and head included) trained on labels only: what KD is measured against.

    It trains on the labelled training split alone: the unlabelled pool has nothing to offer it.
    """
    from kdiqa.fit import MOSFitModule
    from kdiqa.stages import data_for

    seed_stage(recipe)
    dm = IQADataModule(data_for(recipe.data, recipe.distill.fit), recipe.views)
    dm.setup()
    student = build_student(recipe, _target_shapes(recipe, run_dir, dm))
    return _fit_student(recipe, run_dir, BASELINE, MOSFitModule(student, recipe.distill.fit), dm)


def stage_report(recipe: Recipe, run_dir: Path) -> dict[str, Any]:
    """report.md, plots and the summary table over every model this run produced."""
    from kdiqa.evaluate import default_device
    from kdiqa.report import ModelInfo, count_parameters, measure_latency, write_report
    from kdiqa.stages import trained_teacher_path

    candidates = [
        (f"teacher ({recipe.teacher.name})", "teacher", trained_teacher_path(recipe, run_dir)),
        (f"KD student ({recipe.student.options.get('backbone', recipe.student.name)})", f"student_{KD}", run_dir / STUDENTS_DIR / KD),
        (f"label-only student ({recipe.student.options.get('backbone', recipe.student.name)})", f"student_{BASELINE}", run_dir / STUDENTS_DIR / BASELINE),
    ]
    device = str(default_device())
    models = []
    timed: dict[str, tuple[float, float]] = {}  # one measurement per architecture: KD and label-only share it
    for label, key, path in candidates:
        if (path / MODEL_CONFIG).is_file():
            model = load_model(path)
            architecture = f"{type(model).__name__}:{count_parameters(model)}:{read_json(path / MODEL_CONFIG).get('config')}"
            if architecture not in timed:
                timed[architecture] = measure_latency(model, recipe.views.size, device=device)
            median, spread = timed[architecture]
            models.append(ModelInfo(label, key, count_parameters(model), median, spread))
    table = write_report(run_dir, models, title=f"kdiqa report: {recipe.name}")
    print(table)
    return {"report": str(run_dir / "report.md"), "models": [m.key for m in models]}
