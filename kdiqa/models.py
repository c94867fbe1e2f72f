"""Load any saved model folder (a teacher or a student) by what its config says it is.

The one entry point for code that takes "a model folder" from the user: eval, predict, bench,
report. It goes through the registries only.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from kdiqa.errors import CheckpointError
from kdiqa.io import read_json
from kdiqa.students.student import load_student
from kdiqa.teacher import load_teacher

MODEL_CONFIG = "config.json"


def require_model(path: str | Path, how: str = "kdiqa fit-teacher / kdiqa distill") -> Path:
    """``path`` if it holds a saved model, else a one-line error saying which command makes one."""
    path = Path(path)
    if not (path / MODEL_CONFIG).is_file():
        raise CheckpointError(f"{path}: no saved model here (expected {MODEL_CONFIG}); run `{how}` first or pass --checkpoint")
    return path


def load_model(path: str | Path) -> nn.Module:
    """A saved teacher or student folder, whichever it holds."""
    path = require_model(path)
    meta = read_json(path / MODEL_CONFIG)
    return load_teacher(path) if isinstance(meta, dict) and "teacher" in meta else load_student(path)
