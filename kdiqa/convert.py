"""``kdiqa convert``: released DP-IQA files → kdiqa folders (``model.safetensors`` + ``config.json``).

Why convert once: the released teacher is a 4.3 GB ``.pth`` that needs a separate prompt-embedding file
and a key map at every load; the folder this writes is what ``from_pretrained`` (``kdiqa.models.load_model``),
``teacher.checkpoint``, ``kdiqa eval``/``cache``/``predict --model`` already read — safetensors, no
pickle, no Stable Diffusion checkpoint, no text encoder.

Kinds: ``dpiqa-official`` (a teacher ``{dataset}_model_plcc_best.pth``, with ``--prompt-embeddings``
``quality_embeddings.pth``) and ``dpiqa-official-student`` (``{dataset}_student_model_plcc_best.pth``).
A file of the other kind, a whole pickled module, a truncated file or another model's weights is a
one-line error. The teacher is built on the meta device and takes the file's memory-mapped tensors
(``assign=True``), so converting needs about the file's size in memory, not twice it.

The folder is written atomically: into a temporary folder beside ``out``, renamed into place when
complete; an existing ``out`` is replaced only with ``force``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.io import atomic_folder
from kdiqa.modeling import ModelMixin
from kdiqa.students.official import OfficialStudent
from kdiqa.teachers.dpiqa.model import DPIQATeacher

KINDS = ("dpiqa-official", "dpiqa-official-student")


def convert(
    kind: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    prompt_embeddings: str | None = None,
    force: bool = False,
    teacher_options: dict[str, Any] | None = None,
    student_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert ``source`` (a released file of ``kind``) into the kdiqa folder ``out``; returns a summary."""
    if kind not in KINDS:
        raise ConfigError(f"convert: unknown kind {kind!r} (choose from {', '.join(KINDS)})")
    if Path(out).exists() and not force:  # before reading gigabytes
        raise CheckpointError(f"{out}: already exists; choose another -o or pass --force to replace it")
    if kind == "dpiqa-official":
        if prompt_embeddings is None:
            raise ConfigError(
                "convert dpiqa-official: the released teacher holds no prompt embeddings; pass --prompt-embeddings "
                "quality_embeddings.pth (the official 1485 x 768 CLIP ViT-L/14 text features)"
            )
        options = dict(teacher_options or {})
        options.setdefault("preset", "sd15")
        model: ModelMixin = DPIQATeacher.from_official(source, prompt_embeddings=str(prompt_embeddings), **options)
        what = "teacher"
    else:
        model, what = OfficialStudent.from_released(source, **(student_options or {})), "student"
    with atomic_folder(out, force) as tmp:
        model.save_pretrained(tmp)
    params = sum(p.numel() for p in model.parameters())
    return {"kind": kind, "model": what, "out": str(out), "parameters": params, "source": str(source)}
