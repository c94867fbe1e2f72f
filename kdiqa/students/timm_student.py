"""The general student, registered as ``timm``: any timm backbone's taps, projectors onto teacher
features, and a score head (see :mod:`kdiqa.students.base` for the contract)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from kdiqa.config.schema import check_choice
from kdiqa.errors import ConfigError
from kdiqa.registry import STUDENTS
from kdiqa.students.base import OFFICIAL_MAP, Student, check_drop_rate, student_image_size
from kdiqa.students.heads import HEADS, DistHead, OfficialMLPHead, PooledMLPHead
from kdiqa.students.projectors import build_projector, normalize_spec
from kdiqa.students.small_cnn import POOLS
from kdiqa.students.taps import Taps


@STUDENTS.register("timm")
class TimmStudent(Student):
    """Any timm backbone (``features_only``) + projectors to teacher features + a score head.

    ``initialised_from``: the backbone weights file it started from (``pretrained``), for the record.
    """

    name = "timm"

    def __init__(
        self,
        backbone: str = "resnet18",
        out_indices: Sequence[int] | None = None,
        head: str = "pooled_mlp",
        projectors: Sequence[Mapping[str, Any]] | None = None,
        image_size: int | Sequence[int] = 64,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pool: str = "avg",
        num_bins: int = 10,
        initialised_from: str | None = None,
    ):
        check_choice("student head", head, HEADS)
        check_choice("student pool", pool, POOLS)
        if int(num_bins) < 2:
            raise ConfigError(f"student num_bins: expected at least 2 bins, got {num_bins}")
        image_size = student_image_size(image_size)
        out_indices = None if out_indices is None else [int(i) for i in out_indices]
        drop_rate = check_drop_rate(drop_rate)
        super().__init__(out_indices=out_indices, image_size=image_size, drop_rate=drop_rate,
                         drop_path_rate=float(drop_path_rate), num_bins=int(num_bins))

        self.taps = Taps(backbone, out_indices, drop_path_rate)
        self.tap_shapes = self.taps.shapes(image_size)
        specs = [normalize_spec(spec, i, len(self.tap_shapes)) for i, spec in enumerate(projectors or [])]
        targets = [spec["target"] for spec in specs]
        for target in targets:
            if targets.count(target) > 1:
                raise ConfigError(f"student projectors: target {target!r} appears more than once")
        self.projectors = nn.ModuleList(build_projector(spec, self.tap_shapes[spec["tap"]][0]) for spec in specs)
        self.projector_specs = specs
        self.config["projectors"] = [dict(spec, shape=list(spec["shape"])) for spec in specs]  # a copy: config is edited

        last_channels = self.tap_shapes[-1][0]
        if head == "pooled_mlp":
            self.head = PooledMLPHead(last_channels, 256, drop_rate, pool)
        elif head == "dist":
            self.head = DistHead(last_channels, int(num_bins), drop_rate, pool)
        else:
            if OFFICIAL_MAP not in targets:
                raise ConfigError(
                    f"student head 'official_mlp' reads the projected {OFFICIAL_MAP!r}: add a projector with "
                    f"target {OFFICIAL_MAP!r} (projectors have targets {targets})"
                )
            self.head = OfficialMLPHead(specs[targets.index(OFFICIAL_MAP)]["shape"], OFFICIAL_MAP, drop_rate)


def describe(backbone: str, image_size: int | Sequence[int] = 64, out_indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Parameter count and tap shapes of a backbone at an input size (for benchmarks and recipe writing)."""
    taps = Taps(backbone, out_indices)
    shapes = taps.shapes(student_image_size(image_size))
    return {
        "backbone": backbone,
        "image_size": image_size,
        "params": sum(p.numel() for p in taps.parameters()),
        "taps": [list(s) for s in shapes],
        "reductions": taps.reductions,
    }
