"""The contract between teachers, the feature cache and students.

A teacher maps a batch of image views to a :class:`TeacherOutput`. Feature names are the contract:
a recipe says which named teacher feature a student tap is matched to, and the cache stores features
under the same names.

Input convention for every teacher: float32 RGB in [0, 1], shape (B, 3, H, W), exactly what the view
sampler produces. Each teacher applies its own normalisation inside ``forward`` so that the cache,
the student and the teacher never disagree about pixel ranges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from kdiqa.errors import KdiqaError
from kdiqa.modeling import ModelMixin
from kdiqa.registry import TEACHERS


@dataclass
class TeacherOutput:
    score: torch.Tensor  # (B,) predicted quality, normalised scale (higher = better)
    dist: torch.Tensor | None = None  # (B, K) score distribution, rows sum to 1
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, C, H, W) or (B, D)


class Teacher(ModelMixin):
    """Base class for registered teachers: set ``name`` (the registry name) and implement ``forward``.

    The constructor's arguments are the teacher's config (:class:`kdiqa.modeling.ModelMixin`), so
    ``save_pretrained``/``Teacher.from_pretrained`` rebuild it without the recipe, as diffusers does.
    """

    saved_as: ClassVar[str] = "teacher"
    registry = TEACHERS
    # False for a teacher trained elsewhere (a pyiqa metric, an ONNX model): ``fit_teacher`` saves it as
    # built, for the stages after it, instead of fitting it to the MOS
    needs_fitting: ClassVar[bool] = True
    input_multiple: int = 1  # input sides must be a multiple of this (DP-IQA: its VAE × U-Net stride)
    bench_note: ClassVar[str] = ""  # what a benchmark row of this teacher should say (e.g. what is not counted)

    def forward(self, images: torch.Tensor) -> TeacherOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self, train_loader: Any) -> None:
        """Called once before fitting with the training loader.

        For what comes from data rather than gradients (e.g. latent statistics of a randomly
        initialised VAE); the default does nothing.
        """

    def feature_shapes(self, image_size: int | tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """Shape (without batch) of each named feature at an input size; default: a dummy forward.

        Two images, not one: TANet's official AVA theme path normalises across the batch.
        """
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        device = next((t.device for t in (*self.parameters(), *self.buffers())), torch.device("cpu"))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(torch.zeros(2, 3, h, w, device=device))
        finally:
            self.train(was_training)
        return {k: tuple(v.shape[1:]) for k, v in out.features.items()}

    @classmethod
    def describe(cls, *args: Any, **options: Any) -> dict[str, Any]:
        """What ``kdiqa info teacher NAME`` prints: sizes and feature shapes, without weights."""
        raise KdiqaError(f"teacher {cls.name!r} cannot describe itself without being built")
