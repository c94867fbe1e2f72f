"""DP-IQA's official student (RomGai/DP-IQA ``iqa_models/student.py``) as the kdiqa student ``dpiqa_official``.

The architecture: torchvision's EfficientNet-B7 features (its avgpool and classifier are identities in
the official code) → 2560×16×16 at 512² → ConvTranspose2d(2560→8, k3, s2, p1, output_padding 1) + ReLU →
nearest 64² (the feature map matched to the teacher's ``quality_map``) → fc1 32768→512, ReLU, fc2, ReLU,
fc3. It takes the views in [0, 1] *unnormalised*, as the official training did (its in-the-wild
transform is resize + ToTensor only), so ``taps.mean``/``taps.std`` are 0 and 1.

It is a :class:`kdiqa.students.base.Student` — ``taps`` (one: the last feature map), ``projectors``
(the official ConvTranspose projector), ``head`` (the official MLP on the projected map) — so it
trains, caches, evaluates, predicts, benches and exports like any student. The recipe option
``weights`` is a released student file (:meth:`OfficialStudent.from_released`; ``initialised_from``
keeps the path); ``pretrained`` is a local torchvision ImageNet file for the backbone, the official
starting point. Released key → kdiqa key: ``base_model.features.*`` →
``taps.features.*``, ``conv_transpose.*`` → ``projectors.0.up.*``, ``fc1/2/3.*`` → ``head.mlp.2/4/6.*``.
``backbone`` may name a smaller torchvision EfficientNet (b0…b6): the same key layout, for tests and
lighter students.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from kdiqa.errors import CheckpointError, ConfigError
from kdiqa.io import load_weights
from kdiqa.registry import STUDENTS
from kdiqa.released import STUDENT, map_released, read_released, rename
from kdiqa.students.base import OFFICIAL_MAP, Student, check_drop_rate, student_image_size
from kdiqa.students.heads import OfficialMLPHead
from kdiqa.students.projectors import OfficialProjector, normalize_spec

BACKBONES = tuple(f"efficientnet_b{i}" for i in range(8))
OFFICIAL_PROJECTOR = {"tap": -1, "target": OFFICIAL_MAP, "shape": [8, 64, 64], "kind": "official"}
RULES = [
    ("base_model.features.", "taps.features."),
    ("conv_transpose.", "projectors.0.up."),
    ("fc1.", "head.mlp.2."),
    ("fc2.", "head.mlp.4."),
    ("fc3.", "head.mlp.6."),
]
_STRIDE_2_LAYERS = 5  # EfficientNet's stem and four stages halve the map (ceil): 512 → 16


class EfficientNetTaps(nn.Module):
    """torchvision EfficientNet ``features`` fed [0, 1] images as they are; one tap, the last map."""

    def __init__(self, backbone: str):
        super().__init__()
        model = getattr(torchvision.models, backbone)(weights=None)
        self.backbone_name = backbone
        self.features = model.features
        self.channels = [int(model.classifier[1].in_features)]
        # the official student normalises nothing; kept as buffers so export records the convention
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.ones(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [self.features(images)]

    def shapes(self, image_size: int | Sequence[int]) -> list[tuple[int, int, int]]:
        h, w = (image_size, image_size) if isinstance(image_size, int) else (int(s) for s in image_size)
        for _ in range(_STRIDE_2_LAYERS):
            h, w = (h + 1) // 2, (w + 1) // 2
        return [(self.channels[0], h, w)]

    def load_pretrained(self, path: str | Path) -> int:
        """A torchvision EfficientNet state dict (``features.*``; the classifier is left out)."""
        state = load_weights(path)
        own = self.features.state_dict()
        matched = {}
        for key, value in state.items():
            for prefix in ("base_model.features.", "features.", "taps.features."):
                if key.startswith(prefix) and key[len(prefix):] in own:
                    matched[key[len(prefix):]] = value
        missing = [k for k in own if k not in matched]
        if not matched or missing:
            raise CheckpointError(
                f"{path}: not torchvision {self.backbone_name} weights ({len(missing)} of {len(own)} backbone tensors "
                f"missing, e.g. features.{missing[0] if missing else ''}); give the file of torchvision.models.{self.backbone_name}"
            )
        self.features.load_state_dict(matched, strict=True)
        return len(matched)


@STUDENTS.register("dpiqa_official")
class OfficialStudent(Student):
    """The official DP-IQA student; see the module docstring."""

    name = "dpiqa_official"
    weight_options = ("weights", "pretrained")

    def __init__(
        self,
        backbone: str = "efficientnet_b7",
        head: str = "official_mlp",
        projectors: Sequence[Mapping[str, Any]] | None = None,
        image_size: int | Sequence[int] = 512,
        drop_rate: float = 0.0,
        initialised_from: str | None = None,
    ):
        if backbone not in BACKBONES:
            raise ConfigError(
                f"student dpiqa_official: backbone must be a torchvision EfficientNet ({', '.join(BACKBONES)}), got {backbone!r}; "
                "for other backbones use student name 'timm'"
            )
        if head != "official_mlp":
            raise ConfigError(f"student dpiqa_official: the official student has the 'official_mlp' head, got {head!r}")
        drop_rate = check_drop_rate(drop_rate)
        image_size = student_image_size(image_size)
        specs = [normalize_spec(spec, i, 1) for i, spec in enumerate(projectors or [OFFICIAL_PROJECTOR])]
        if len(specs) != 1 or specs[0]["target"] != OFFICIAL_MAP or specs[0]["kind"] != "official":
            raise ConfigError(
                f"student dpiqa_official: the official student has one projector, kind 'official', onto {OFFICIAL_MAP!r} "
                f"(distill.features: [{{target: {OFFICIAL_MAP}, tap: -1, kind: official}}]); got {specs}"
            )
        spec = specs[0]
        super().__init__(projectors=[dict(spec, shape=list(spec["shape"]))], image_size=image_size, drop_rate=drop_rate)
        self.taps = EfficientNetTaps(backbone)
        self.tap_shapes = self.taps.shapes(image_size)
        self.projectors = nn.ModuleList([OfficialProjector(self.tap_shapes[0][0], spec["shape"])])
        self.projector_specs = specs
        self.head = OfficialMLPHead(spec["shape"], OFFICIAL_MAP, drop_rate)

    @classmethod
    def from_options(cls, weights: str | None = None, pretrained: str | None = None, **arch: Any) -> OfficialStudent:
        """``weights``: a released student file (every tensor; ``pretrained`` is then not read); ``pretrained``:
        a local torchvision ImageNet file for the backbone, the official starting point."""
        if weights is not None:
            return cls.from_released(weights, **arch)
        return super().from_options(pretrained, **arch)

    @classmethod
    def from_released(cls, path: str | Path, **arch: Any) -> OfficialStudent:
        """A released ``{dataset}_student_model_plcc_best.pth`` (official layout), loaded strictly."""
        state = read_released(path, STUDENT)
        student = cls(**arch, initialised_from=str(path))
        what = f"dpiqa_official student ({student.config['backbone']}, quality map {student.config['projectors'][0]['shape']})"
        mapped, _ = map_released(state, RULES, student.state_dict(), path, what)
        student.load_state_dict(mapped, strict=True)
        return student


def official_student_keys(student: OfficialStudent) -> dict[str, tuple[int, ...]]:
    """The student's tensors under their released names, with shapes (what a released file must hold)."""
    inverse = [(t, s) for s, t in RULES]
    return {rename(k, inverse) or k: tuple(v.shape) for k, v in student.state_dict().items()}

