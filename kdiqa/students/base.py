"""The student contract, and the one factory that builds a recipe's student against a teacher's targets.

A student is ``taps`` (a backbone's feature maps), ``projectors`` (one per teacher feature it imitates,
each mapping a tap to exactly that feature's shape) and a score ``head``. ``student(images)`` takes
float32 (B, 3, H, W) in [0, 1] and returns a dict:

- ``score``: (B,);
- ``dist``: (B, K) softmax for a distribution head (then ``score`` is its mean rescaled to [0, 1]), else None;
- ``taps``: the backbone's feature maps (a list);
- ``features``: {teacher feature name: projected tensor of exactly the teacher's (B, C, H, W)}.

A trained student is a folder (:mod:`kdiqa.modeling`); ``Student.from_pretrained`` rebuilds it with
nothing but torch, timm and this package (no Lightning, no teacher).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from kdiqa.config.schema import FeaturePair, StudentConfig
from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.modeling import ModelMixin
from kdiqa.registry import STUDENTS

OFFICIAL_MAP = "quality_map"  # the teacher feature DP-IQA's official head reads


class Student(ModelMixin):
    """Base of registered students; subclasses build ``taps``, ``projectors`` (with ``projector_specs``) and ``head``."""

    saved_as: ClassVar[str] = "student"
    registry = STUDENTS
    weight_options: ClassVar[tuple[str, ...]] = ("pretrained",)
    taps: nn.Module
    projectors: nn.ModuleList  # a list, not a ModuleDict: teacher feature names contain dots ("unet.up_blocks.2")
    head: nn.Module
    projector_specs: list[dict[str, Any]]  # normalised recipe entries: tap, target, shape, kind
    tap_shapes: list[tuple[int, int, int]]

    @classmethod
    def from_options(cls, pretrained: str | None = None, **arch: Any) -> Student:
        """``pretrained``: a local weights file for the backbone (downloads are disabled)."""
        if pretrained is None:
            return cls(**arch)
        if not isinstance(pretrained, (str, Path)):
            raise ConfigError(
                f"student pretrained: expected a local weights file path (downloads are disabled), got {pretrained!r}"
            )
        return cls.from_backbone_weights(pretrained, **arch)

    @classmethod
    def from_backbone_weights(cls, path: str | Path, **arch: Any) -> Student:
        """The student with its backbone's weights read from a local file (the rest initialised as usual)."""
        student = cls(**arch, initialised_from=str(path))
        student.taps.load_pretrained(path)
        return student

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        taps = self.taps(images)
        features = {
            spec["target"]: proj(taps[spec["tap"]])
            for spec, proj in zip(self.projector_specs, self.projectors, strict=True)
        }
        out = self.head(taps[-1], features)
        return {"score": out["score"], "dist": out.get("dist"), "taps": taps, "features": features}

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape (without batch) of each projected feature: the teacher shapes the recipe asked for."""
        return {spec["target"]: tuple(spec["shape"]) for spec in self.projector_specs}


def build_student(
    student: StudentConfig, image_size: int, pairs: Sequence[FeaturePair] = (), feature_shapes: Mapping[str, tuple[int, ...]] = {}
) -> Student:
    """The recipe's student with one projector per feature pair, shaped like the teacher's targets.

    ``image_size`` (the recipe's view size) is the student's unless its options set one.
    """
    options = dict(student.options)
    options.setdefault("image_size", image_size)
    projectors = []
    for pair in pairs:
        if pair.target not in feature_shapes:
            raise CheckpointError(
                f"distill.features: the teacher targets hold no {pair.target!r} (they hold: {', '.join(feature_shapes) or 'none'}); "
                "add it to cache.features and rebuild the cache"
            )
        projectors.append({"tap": pair.tap, "target": pair.target, "shape": list(feature_shapes[pair.target]), "kind": pair.kind})
    if projectors:
        options["projectors"] = projectors
    return STUDENTS.build(student.name, **options)


def student_image_size(image_size: Any) -> int | list[int]:
    """A student's ``image_size`` option as an int or [H, W] (at least 8 pixels a side)."""
    if isinstance(image_size, bool):
        raise ConfigError(f"student image_size: expected an int or [H, W], got {image_size!r}")
    if isinstance(image_size, int):
        size: int | list[int] = image_size
        sides = [image_size]
    else:
        try:
            size = sides = [int(s) for s in image_size]
        except (TypeError, ValueError):
            raise ConfigError(f"student image_size: expected an int or [H, W], got {image_size!r}") from None
        if len(sides) != 2:
            raise ConfigError(f"student image_size: expected an int or [H, W], got {image_size!r}")
    if min(sides) < 8:
        raise ConfigError(f"student image_size: {image_size!r} is too small (at least 8 pixels)")
    return size


def check_drop_rate(drop_rate: float) -> float:
    if not 0.0 <= float(drop_rate) < 1.0:
        raise ConfigError(f"student drop_rate: expected a value in [0, 1), got {drop_rate}")
    return float(drop_rate)
