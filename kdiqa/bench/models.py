"""What ``kdiqa bench`` measures: a student per backbone (random weights, or distilled from the recipe's
cache with ``--distill``) and the teacher row (``--teacher``)."""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdiqa.config import Recipe
from kdiqa.config.schema import StudentConfig
from kdiqa.errors import ConfigError
from kdiqa.models import require_model
from kdiqa.registry import STUDENTS, TEACHERS
from kdiqa.run import RunDir, prepare_run
from kdiqa.stages.distill import KD, stage_distill
from kdiqa.students.base import Student, build_student
from kdiqa.students.taps import create_backbone
from kdiqa.teachers.base import Teacher

TEACHER_PRESETS = ("tiny", "sd15", "sd21")  # DP-IQA architectures, timed with random weights
# options that belong to one particular backbone and cannot follow a swapped-in one
_BACKBONE_SPECIFIC = ("pretrained", "out_indices")


def _student_options(recipe: Recipe, backbone: str) -> dict[str, Any]:
    """The recipe's student options with ``backbone`` swapped in (options tied to the old one dropped)."""
    options = dict(recipe.student.options) if recipe.student.name == "timm" else {}
    if options.get("backbone") != backbone:
        for key in _BACKBONE_SPECIFIC:
            options.pop(key, None)
    options["backbone"] = backbone
    options["image_size"] = recipe.views.size
    return options


def registered_student(name: str) -> bool:
    """A student registered under its own name (e.g. ``dpiqa_official``) rather than a timm backbone."""
    return name != "timm" and name in STUDENTS


def bench_student(recipe: Recipe, backbone: str) -> tuple[nn.Module, str]:
    """A random-weight student of the recipe's kind on ``backbone``: backbone + score head.

    Projectors only map features onto a teacher's during training, so none are built here; the
    ``official_mlp`` head reads a projected teacher map, so it is replaced by the pooled-MLP head.
    A registered student name (``dpiqa_official``) is built as it is, with its own projector and head.
    """
    if registered_student(backbone):
        return build_student(StudentConfig(name=backbone, options={}), recipe.views.size).eval(), ""
    options, note = _student_options(recipe, backbone), ""
    options.pop("projectors", None)
    if options.get("head") == "official_mlp":
        options["head"] = "pooled_mlp"
        note = "official_mlp head timed as pooled_mlp (it needs teacher-shaped projectors)"
    return build_student(StudentConfig(name="timm", options=options), recipe.views.size).eval(), note


def check_backbones(backbones: Sequence[str]) -> None:
    """Fail in one line before anything slow runs if a name is not a timm model."""
    if not backbones:
        raise ConfigError("bench --students: name at least one timm backbone, e.g. --students efficientnet_b0,mobilenetv3_large_100")
    for name in backbones:
        if not registered_student(name):
            create_backbone(name)  # raises ConfigError with close matches


def bench_teacher(spec: str, recipe: Recipe, run: RunDir) -> tuple[nn.Module, str, str, dict[str, float], str]:
    """(teacher, row name, backbone label, test metrics, note) for ``--teacher``: a DP-IQA preset with
    random weights, ``trained`` (the recipe's teacher) or a saved teacher folder."""
    if spec in TEACHER_PRESETS:
        torch.manual_seed(0)
        teacher = TEACHERS.build("dpiqa", preset=spec)
        return teacher.eval(), f"teacher dpiqa {spec} (random weights)", f"dpiqa {spec}", {}, ""
    metrics: dict[str, float] = {}
    if spec == "trained":
        path = run.teacher
        if not recipe.teacher.checkpoint:
            test = run.read_metrics().get("teacher", {}).get("test", {})
            metrics = {k: float(test[k]) for k in ("srcc", "plcc") if k in test}
    else:
        path = Path(spec)
    teacher = Teacher.from_pretrained(require_model(path, "kdiqa fit-teacher"))
    name = f"teacher {teacher.name} ({'trained' if spec == 'trained' else path.name})"
    note = "; ".join(n for n in (f"loaded from {path}", teacher.bench_note) if n)  # e.g. onnx: not counted
    return teacher, name, str(teacher.name), metrics, note


def teacher_size(teacher: Teacher, size: int) -> tuple[int, str]:
    """The nearest input side the teacher accepts (DP-IQA needs multiples of its VAE × U-Net stride)."""
    multiple = int(teacher.input_multiple)
    fitted = max(multiple, math.ceil(size / multiple) * multiple)
    return fitted, "" if fitted == size else f"timed at {fitted} px (sides must be multiples of {multiple})"


def distill_student(recipe: Recipe, run: RunDir, backbone: str) -> tuple[nn.Module, dict[str, float]]:
    """Distil ``backbone`` from the recipe's (complete) cache with the recipe's schedule; test metrics.

    Each student gets its own folder ``<run>/bench/<backbone>`` (checkpoints, metrics.json, the saved
    student) and reads the shared cache; targets always come from the cache, never the teacher online.
    """
    sub = copy.deepcopy(recipe)
    options = _student_options(recipe, backbone)
    options.pop("image_size")  # build_student sets it from views.size
    sub.student.name = "timm"
    sub.student.options = options
    if registered_student(backbone):
        sub.student.name, sub.student.options = backbone, {}
    sub.cache.path = str(run.cache.resolve())
    # the teacher the cache is checked against is the recipe's, not one in the student's own folder
    sub.teacher.checkpoint = str(run.teacher.resolve())
    sub.distill.source = "cache"
    sub.out = str(run.bench_run(backbone))
    sub_run = prepare_run(sub)
    summary = stage_distill(sub, sub_run)
    test = summary.get("test", {})
    metrics = {k: float(test[k]) for k in ("srcc", "plcc") if k in test}
    return Student.from_pretrained(sub_run.student(KD)), metrics
