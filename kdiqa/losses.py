"""Losses, by name, for recipes: ``{name: mse, weight: 1.0, options: {...}}``.

Every loss is an ``nn.Module`` called as ``loss(pred, target)`` and returns a scalar. The same names
serve scores (B,), feature maps (B, C, H, W) and distributions (B, K); each docstring says which.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdiqa.metrics import emd_loss
from kdiqa.registry import LOSSES


@LOSSES.register("mse")
class MSELoss(nn.Module):
    """Mean squared error (DP-IQA's official loss for scores and for the quality map)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, target)


@LOSSES.register("l1")
class L1Loss(nn.Module):
    """Mean absolute error; less sensitive than MSE to a few badly labelled images."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(pred, target)


@LOSSES.register("smooth_l1")
class SmoothL1Loss(nn.Module):
    """Huber-style: quadratic below ``beta``, linear above."""

    def __init__(self, beta: float = 0.1):
        super().__init__()
        self.beta = beta

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(pred, target, beta=self.beta)


@LOSSES.register("margin_ranking")
class MarginRankingLoss(nn.Module):
    """Pairwise ranking over every pair in the batch whose targets differ.

    SRCC only cares about order; this term rewards getting pairs in the right order even when the
    absolute scale is off, which MSE alone does not.
    """

    def __init__(self, margin: float = 0.0):
        super().__init__()
        self.margin = margin

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.reshape(-1), target.reshape(-1)
        dp = pred[:, None] - pred[None, :]
        sign = torch.sign(target[:, None] - target[None, :])
        mask = sign != 0
        if not mask.any():
            return pred.sum() * 0.0
        return F.relu(self.margin - sign[mask] * dp[mask]).mean()


@LOSSES.register("plcc")
class PLCCLoss(nn.Module):
    """(1 − PLCC) / 2 over the batch: scale- and shift-invariant, aligned with the reported metric."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.reshape(-1).float(), target.reshape(-1).float()
        if pred.numel() < 2:
            return pred.sum() * 0.0
        p = pred - pred.mean()
        t = target - target.mean()
        r = (p * t).sum() / (p.norm() * t.norm() + 1e-8)
        return (1 - r) / 2


@LOSSES.register("cosine")
class CosineLoss(nn.Module):
    """1 − cosine similarity per sample over flattened features: matches direction, not magnitude."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - F.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1, eps=1e-8)).mean()


@LOSSES.register("emd")
class EMDLoss(nn.Module):
    """Earth mover's distance between ordered score distributions (NIMA; r=2 for training)."""

    def __init__(self, r: int = 2):
        super().__init__()
        self.r = r

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return emd_loss(pred, target, r=self.r)


@LOSSES.register("kl")
class KLLoss(nn.Module):
    """KL(target ‖ pred) between distributions (rows sum to 1), the classic soft-label KD term."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.clamp_min(self.eps)
        return (target * (target.log() - pred.clamp_min(self.eps).log())).sum(dim=-1).mean()


class WeightedLoss(nn.Module):
    """A weighted sum of registered losses, as a recipe's ``losses:`` list describes it."""

    def __init__(self, terms: list[tuple[str, float, dict]]):
        super().__init__()
        names = [name for name, _, _ in terms]
        # unique log keys even when the same loss appears twice with different options
        self.keys = [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]
        self.weights = [float(w) for _, w, _ in terms]
        self.terms = nn.ModuleList(LOSSES.build(name, **opts) for name, _, opts in terms)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {key: term(pred, target) for key, term in zip(self.keys, self.terms, strict=True)}
        total = sum(w * v for w, v in zip(self.weights, parts.values(), strict=True))
        return total, parts  # type: ignore[return-value]
