"""Distillation: a student learns from labels and a teacher's targets (cached or online)."""
from kdiqa.distill.module import DistillModule

__all__ = ["DistillModule"]
