"""Load any saved model folder (a teacher or a student) by what its config says it is.

The one entry point for code that takes "a model folder" from the user: eval, predict, bench,
report. It goes through the registries only (:mod:`kdiqa.modeling`).
"""
from __future__ import annotations

from pathlib import Path

from kdiqa.errors import CheckpointError
from kdiqa.io import read_json
from kdiqa.modeling import CONFIG_NAME, ModelMixin
from kdiqa.students.base import Student
from kdiqa.teachers.base import Teacher


def require_model(path: str | Path, how: str = "kdiqa fit-teacher / kdiqa distill") -> Path:
    """``path`` if it holds a saved model, else a one-line error saying which command makes one."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: no saved model here (expected {CONFIG_NAME}); run `{how}` first or pass --checkpoint")
    return path


def load_model(path: str | Path) -> ModelMixin:
    """A saved teacher or student folder, whichever it holds; in eval mode."""
    path = require_model(path)
    meta = read_json(path / CONFIG_NAME)
    return (Teacher if isinstance(meta, dict) and "teacher" in meta else Student).from_pretrained(path)
