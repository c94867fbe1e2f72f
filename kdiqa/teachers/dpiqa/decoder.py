"""DP-IQA's quality feature decoder: U-Net up-block maps → ``quality_map`` (F_quality) → score.

Structure as in the official code: every level is resized (bicubic) to one map size, passed through
conv3×3 + squeeze-excitation, the levels are concatenated (finest level first, as the official
decoder does), fused by conv3×3 + SE, squeezed by 1×1 convs (each followed by ReLU) to the 8-channel
``quality_map`` that the student imitates, and flattened into an MLP that predicts the score. The
official widths (512, 128→32→8, MLP 512) give 42.9M parameters at 64² maps; they are options so
that the tiny preset stays tiny.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcitation(nn.Module):
    """Channel gating from global context (bias-free, as in the official SELayer)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class ConvSE(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, reduction: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), SqueezeExcitation(out_channels, reduction))


class QualityFeatureDecoder(nn.Module):
    """Maps the U-Net's up-block outputs (in up-block order) to ``(score (B,), quality_map (B, C, S, S))``."""

    def __init__(
        self,
        in_channels: Sequence[int],
        width: int = 512,
        head_channels: Sequence[int] = (128, 32, 8),
        mlp_hidden: int = 512,
        map_size: int = 64,
        se_reduction: int = 16,
    ):
        super().__init__()
        self.map_size = int(map_size)
        # levels[i] reads up_blocks[i]; they are concatenated in reverse (finest first) like the official code
        self.levels = nn.ModuleList(ConvSE(c, width, se_reduction) for c in in_channels)
        self.fuse = ConvSE(width * len(in_channels), width, se_reduction)
        head: list[nn.Module] = []
        previous = width
        for channels in head_channels:
            head += [nn.Conv2d(previous, channels, kernel_size=1), nn.ReLU()]
            previous = channels
        self.head = nn.Sequential(*head)
        self.map_channels = previous
        self.mlp = nn.Sequential(
            nn.Linear(previous * self.map_size * self.map_size, mlp_hidden),
            nn.ReLU(),
            nn.Linear(mlp_hidden, mlp_hidden),
            nn.ReLU(),
            nn.Linear(mlp_hidden, 1),
        )

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(features) != len(self.levels):
            raise ValueError(f"decoder expects {len(self.levels)} up-block maps, got {len(features)}")
        size = (self.map_size, self.map_size)
        levels = []
        for conv, x in zip(self.levels, features, strict=True):
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
            levels.append(conv(x))
        fused = self.fuse(torch.cat(levels[::-1], dim=1))
        quality_map = self.head(fused)
        score = self.mlp(quality_map.flatten(1)).squeeze(1)
        return score, quality_map
