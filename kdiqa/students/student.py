"""The student: a timm backbone's taps, projectors onto teacher features, and a score head.

Contract with the distillation module (kept exactly): ``STUDENTS.build("timm", **config)`` builds a
:class:`Student` from JSON-serialisable arguments (kept in ``student.config``); ``student(images)``
takes float32 (B, 3, H, W) in [0, 1] and returns a dict:

- ``score``: (B,);
- ``dist``: (B, K) softmax for ``head="dist"`` (then ``score`` is its mean rescaled to [0, 1]), else None;
- ``taps``: the backbone's feature maps (a list);
- ``features``: {teacher feature name: projected tensor of exactly the teacher's (B, C, H, W)}.

A trained student is a folder with ``model.safetensors`` and ``config.json``; :func:`load_student`
rebuilds it with nothing but torch, timm and this package (no Lightning, no teacher).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdiqa.errors import CheckpointError, ConfigError, KdiqaError
from kdiqa.registry import STUDENTS
from kdiqa.students.heads import HEADS, DistHead, OfficialMLPHead, PooledMLPHead
from kdiqa.students.projectors import build_projector, normalize_spec
from kdiqa.students.small_cnn import POOLS
from kdiqa.students.taps import Taps

STUDENT_CONFIG = "config.json"
STUDENT_WEIGHTS = "model.safetensors"
OFFICIAL_MAP = "quality_map"  # the teacher feature DP-IQA's official head reads


@STUDENTS.register("timm")
class Student(nn.Module):
    """Any timm backbone (``features_only``) + projectors to teacher features + a score head."""

    name = "timm"

    def __init__(
        self,
        backbone: str = "resnet18",
        out_indices: Sequence[int] | None = None,
        pretrained: str | None = None,
        head: str = "pooled_mlp",
        projectors: Sequence[Mapping[str, Any]] | None = None,
        image_size: int | Sequence[int] = 64,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pool: str = "avg",
        num_bins: int = 10,
    ):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"student head: unknown {head!r} (known: {', '.join(HEADS)})")
        if pool not in POOLS:
            raise ConfigError(f"student pool: unknown {pool!r} (known: {', '.join(POOLS)})")
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ConfigError(f"student drop_rate: expected a value in [0, 1), got {drop_rate}")
        if int(num_bins) < 2:
            raise ConfigError(f"student num_bins: expected at least 2 bins, got {num_bins}")
        if pretrained is not None and not isinstance(pretrained, (str, Path)):
            raise ConfigError(
                f"student pretrained: expected a local weights file path (downloads are disabled), got {pretrained!r}"
            )
        image_size = _image_size(image_size)
        out_indices = None if out_indices is None else [int(i) for i in out_indices]

        self.taps = Taps(backbone, out_indices, drop_path_rate)
        if pretrained:
            self.taps.load_pretrained(pretrained)
        self.tap_shapes: list[tuple[int, int, int]] = self.taps.shapes(image_size)

        specs = [normalize_spec(spec, i, len(self.tap_shapes)) for i, spec in enumerate(projectors or [])]
        targets = [spec["target"] for spec in specs]
        for target in targets:
            if targets.count(target) > 1:
                raise ConfigError(f"student projectors: target {target!r} appears more than once")
        # a list, not a ModuleDict: teacher feature names contain dots (e.g. "unet.up_blocks.2")
        self.projectors = nn.ModuleList(build_projector(spec, self.tap_shapes[spec["tap"]][0]) for spec in specs)
        self._projector_specs = specs

        last_channels = self.tap_shapes[-1][0]
        self.head: nn.Module
        if head == "pooled_mlp":
            self.head = PooledMLPHead(last_channels, 256, float(drop_rate), pool)
        elif head == "dist":
            self.head = DistHead(last_channels, int(num_bins), float(drop_rate), pool)
        else:
            if OFFICIAL_MAP not in targets:
                raise ConfigError(
                    f"student head 'official_mlp' reads the projected {OFFICIAL_MAP!r}: add a projector with "
                    f"target {OFFICIAL_MAP!r} (projectors have targets {targets})"
                )
            self.head = OfficialMLPHead(specs[targets.index(OFFICIAL_MAP)]["shape"], OFFICIAL_MAP, float(drop_rate))

        self.config: dict[str, Any] = {
            "backbone": backbone,
            "out_indices": out_indices,
            "pretrained": None if pretrained is None else str(pretrained),
            "head": head,
            "projectors": [dict(spec, shape=list(spec["shape"])) for spec in specs],  # a copy: config is edited
            "image_size": image_size,
            "drop_rate": float(drop_rate),
            "drop_path_rate": float(drop_path_rate),
            "pool": pool,
            "num_bins": int(num_bins),
        }

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        taps = self.taps(images)
        features = {
            spec["target"]: proj(taps[spec["tap"]])
            for spec, proj in zip(self._projector_specs, self.projectors, strict=True)
        }
        out = self.head(taps[-1], features)
        return {"score": out["score"], "dist": out.get("dist"), "taps": taps, "features": features}

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape (without batch) of each projected feature: the teacher shapes the recipe asked for."""
        return {spec["target"]: tuple(spec["shape"]) for spec in self._projector_specs}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _image_size(image_size: Any) -> int | list[int]:
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


def save_student(student: Student, folder: str | Path) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (config last: a folder with a config has its weights)."""
    from kdiqa import __version__
    from kdiqa.io import save_weights, write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(folder / STUDENT_WEIGHTS, student.state_dict(), what="the student's weights")
    write_json(folder / STUDENT_CONFIG, {"student": student.name, "config": student.config, "kdiqa_version": __version__},
               what="the student's config")
    return folder


def load_student(folder: str | Path, map_location: str | torch.device = "cpu") -> Student:
    """Rebuild a saved student through the registry and load its weights strictly; returned in eval mode.

    The ``pretrained`` file of the config is not read again (the saved weights supersede it), so a
    student folder is self-contained.
    """
    from kdiqa.io import load_weights, read_json

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: student folder not found")
    config_path, weights_path = folder / STUDENT_CONFIG, folder / STUDENT_WEIGHTS
    meta = read_json(config_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or not isinstance(meta.get("student"), str):
        raise CheckpointError(f"{config_path}: not a kdiqa student config (needs 'student' and 'config')")
    config = dict(meta["config"])
    pretrained = config.pop("pretrained", None)
    try:
        student = STUDENTS.build(meta["student"], **config, pretrained=None)
    except KdiqaError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    state = load_weights(weights_path)
    own = student.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"{weights_path}: weights do not match {config_path.name} ({len(missing)} missing e.g. {missing[:2]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:2]}, {len(reshaped)} of another shape e.g. {reshaped[:2]})"
        )
    student.load_state_dict(state, strict=True)
    if hasattr(student, "config"):
        student.config["pretrained"] = pretrained  # provenance only
    return student.to(map_location).eval()


def describe(backbone: str, image_size: int | Sequence[int] = 64, out_indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Parameter count and tap shapes of a backbone at an input size (for benchmarks and recipe writing)."""
    taps = Taps(backbone, out_indices)
    shapes = taps.shapes(_image_size(image_size))
    return {
        "backbone": backbone,
        "image_size": image_size,
        "params": sum(p.numel() for p in taps.parameters()),
        "taps": [list(s) for s in shapes],
        "reductions": taps.reductions,
    }
