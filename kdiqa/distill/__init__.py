"""Distillation: a student learns from labels and a teacher's targets (cached or online)."""
from kdiqa.distill.module import DistillModule, teacher_targets

__all__ = ["DistillModule", "teacher_targets"]
