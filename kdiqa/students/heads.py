"""Score heads. Each returns ``{"score": (B,)}`` and, for the distribution head, ``"dist": (B, K)``."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kdiqa.students.small_cnn import global_pool, pooled_width

HEADS = ("pooled_mlp", "official_mlp", "dist")


class PooledMLPHead(nn.Module):
    """Global pool of the last tap → MLP (hidden 256) → 1: the default for any backbone."""

    def __init__(self, in_channels: int, hidden: int = 256, drop_rate: float = 0.0, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.mlp = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(pooled_width(in_channels, pool), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, last_tap: torch.Tensor, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"score": self.mlp(global_pool(last_tap, self.pool)).squeeze(1)}


class OfficialMLPHead(nn.Module):
    """DP-IQA's head on the projected quality map: flatten (8×H×W) → 512 → 512 → 1, ReLU between.

    It reads the *projected* map, so the score and the feature loss share one representation, as in
    the official student.
    """

    def __init__(self, map_shape: Sequence[int], source: str = "quality_map", drop_rate: float = 0.0):
        super().__init__()
        self.source = source
        in_features = math.prod(int(s) for s in map_shape)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(drop_rate),
            nn.Linear(in_features, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 1),
        )

    def forward(self, last_tap: torch.Tensor, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"score": self.mlp(features[self.source]).squeeze(1)}


class DistHead(nn.Module):
    """Global pool → Linear → K-way softmax (NIMA-style score distribution, e.g. for aesthetics).

    The score is the distribution's mean rescaled to [0, 1]: (Σ i·p_i − 1) / (K − 1), bins i = 1..K.
    """

    def __init__(self, in_channels: int, num_bins: int = 10, drop_rate: float = 0.0, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.fc = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(pooled_width(in_channels, pool), num_bins))
        self.register_buffer("bins", torch.arange(1, num_bins + 1, dtype=torch.float32), persistent=False)

    def forward(self, last_tap: torch.Tensor, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dist = torch.softmax(self.fc(global_pool(last_tap, self.pool)), dim=1)
        score = ((dist * self.bins).sum(1) - 1) / (len(self.bins) - 1)
        return {"score": score, "dist": dist}
