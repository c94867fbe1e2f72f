"""Projectors: map a student tap to the exact shape of a named teacher feature.

Shapes come from a dummy forward of the backbone (as mdistiller and RepDistiller do), never from
hard-coded channel counts, so any timm backbone can be paired with any teacher feature.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdiqa.config.schema import PROJECTOR_KINDS
from kdiqa.errors import ConfigError

_SPEC_KEYS = {"tap", "target", "shape", "kind", "hidden"}


class OfficialProjector(nn.Module):
    """DP-IQA's student projector: ConvTranspose2d (k3, s2, p1, output_padding 1) + ReLU, nearest resize.

    Kept exactly as the official code has it so the official student setting can be reproduced.
    """

    def __init__(self, in_channels: int, target_shape: Sequence[int]):
        super().__init__()
        self.target_shape = tuple(int(s) for s in target_shape)
        self.up = nn.ConvTranspose2d(in_channels, self.target_shape[0], 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(x))
        if tuple(x.shape[-2:]) != self.target_shape[1:]:
            x = F.interpolate(x, size=self.target_shape[1:], mode="nearest")
        return x


class ConvProjector(nn.Module):
    """A general projector: 1×1 conv → BN → ReLU → 3×3 conv, then bilinear resize.

    No final activation: teacher features may be negative. ``hidden`` defaults to
    max(target channels, 64) so that an 8-channel target is not reached through an 8-channel bottleneck.
    """

    def __init__(self, in_channels: int, target_shape: Sequence[int], hidden: int | None = None):
        super().__init__()
        self.target_shape = tuple(int(s) for s in target_shape)
        out_channels = self.target_shape[0]
        hidden = int(hidden) if hidden else max(out_channels, 64)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        if tuple(x.shape[-2:]) != self.target_shape[1:]:
            x = F.interpolate(x, size=self.target_shape[1:], mode="bilinear", align_corners=False)
        return x


def normalize_spec(spec: Any, index: int, num_taps: int) -> dict[str, Any]:
    """Check one recipe projector entry and return it as plain JSON types (``kind`` defaults to ``conv``)."""
    where = f"projectors[{index}]"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with tap, target, shape, kind; got {type(spec).__name__}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_SPEC_KEYS))})")
    for key in ("target", "shape"):
        if key not in spec:
            raise ConfigError(f"{where}: missing key {key!r}")
    target = spec["target"]
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}.target: expected a teacher feature name, got {target!r}")
    shape = spec["shape"]
    try:
        shape = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}.shape: expected [C, H, W], got {shape!r}") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"{where}.shape: expected three positive sizes [C, H, W], got {shape}")
    tap = spec.get("tap", -1)
    if isinstance(tap, bool) or not isinstance(tap, int):
        raise ConfigError(f"{where}.tap: expected an integer index into the taps, got {tap!r}")
    if not -num_taps <= tap < num_taps:
        raise ConfigError(f"{where}.tap: index {tap} out of range for {num_taps} taps")
    kind = spec.get("kind", "conv")
    if kind not in PROJECTOR_KINDS:
        raise ConfigError(f"{where}.kind: unknown projector {kind!r} (known: {', '.join(PROJECTOR_KINDS)})")
    out: dict[str, Any] = {"tap": tap, "target": target, "shape": shape, "kind": kind}
    if spec.get("hidden") is not None:
        if kind != "conv":
            raise ConfigError(f"{where}.hidden: only the 'conv' projector has a hidden width")
        out["hidden"] = int(spec["hidden"])
    return out


def build_projector(spec: Mapping[str, Any], in_channels: int) -> nn.Module:
    """Build the projector a normalised spec describes, for a tap with ``in_channels`` channels."""
    if spec["kind"] == "official":
        return OfficialProjector(in_channels, spec["shape"])
    return ConvProjector(in_channels, spec["shape"], spec.get("hidden"))
