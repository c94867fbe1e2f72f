"""A teacher kdiqa does not ship: image sharpness (mean gradient magnitude), for the plugin example.

What a plugin needs: a :class:`kdiqa.teachers.base.Teacher` subclass whose ``name`` is its entry-point
name (a saved teacher is rebuilt by that name) and whose forward maps views in [0, 1] to a
:class:`kdiqa.teachers.base.TeacherOutput` (score higher = better on [0, 1]; named feature maps optional).
Its constructor arguments are its config (recorded by the base; ``super().__init__(key=value)`` records a
normalised value instead).
``needs_fitting = False`` because it is a fixed rule: ``fit_teacher`` saves it as it is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdiqa.teachers.base import Teacher, TeacherOutput

__all__ = ["SharpnessTeacher"]


class SharpnessTeacher(Teacher):
    """Score = tanh(gain · mean |∇ luminance|); feature ``edges``: the gradient magnitude map, halved."""

    name = "sharpness"
    needs_fitting = False

    def __init__(self, gain: float = 8.0):
        super().__init__(gain=float(gain))
        kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([kernel, kernel.t()]).unsqueeze(1))  # (2, 1, 3, 3)

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        luminance = (images * torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        gradient = F.conv2d(luminance, self.sobel, padding=1).norm(dim=1, keepdim=True)
        score = torch.tanh(self.config["gain"] * gradient.mean((1, 2, 3)))
        return TeacherOutput(score=score, features={"edges": F.avg_pool2d(gradient, 2)})
