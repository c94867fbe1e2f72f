"""The distillation step: student outputs + teacher targets + labels → one weighted loss.

Teacher targets come either from a cache batch (``batch["teacher"]``) or from the teacher run online
under ``no_grad`` on the same views; both are made by :func:`kdiqa.cache.targets.teacher_targets`
(pooling, float32), so the two sources give the same loss up to the cache's fp16 rounding.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdiqa.cache.targets import teacher_targets
from kdiqa.config.schema import DistillConfig, FitConfig
from kdiqa.errors import ConfigError
from kdiqa.fit import MOSFitModule
from kdiqa.losses import WeightedLoss


def _terms(terms: Sequence[Any]) -> WeightedLoss | None:
    return WeightedLoss([(t.name, t.weight, dict(t.options)) for t in terms]) if terms else None


class DistillModule(MOSFitModule):
    """Train a student on labels (``fit.losses``) plus teacher score, features and distribution.

    The teacher, when given (online mode), is frozen and kept out of the module's parameters and
    state dict: checkpoints hold the student only.
    """

    def __init__(
        self,
        student: nn.Module,
        fit: FitConfig,
        distill: DistillConfig,
        teacher: nn.Module | None = None,
        pool: Mapping[str, Any] | None = None,
    ):
        super().__init__(student, fit)
        self.distill_cfg = distill
        self.score_kd = _terms(distill.teacher_score)
        self.dist_kd = _terms(distill.dist)
        self.feature_kd = nn.ModuleList(WeightedLoss([(p.loss, p.weight, {})]) for p in distill.features)
        self.feature_names = [p.target for p in distill.features]
        self.pool = dict(pool or {})
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []

    def targets(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if "teacher" in batch:
            return {k: v.float() for k, v in batch["teacher"].items()}
        if not self._teacher:
            raise ConfigError("distill.source: 'online' needs a teacher, and the batch holds no cached targets")
        teacher = self._teacher[0].to(batch["image"].device)
        with torch.no_grad():
            return teacher_targets(teacher(batch["image"]), self.feature_names, self.pool, "distill.features")

    def masked_label_loss(self, score: torch.Tensor, mos: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``fit.losses`` over the rows that have a label; pool rows (MOS NaN) have none.

        Each term averages over the labelled rows only, as it would over a batch of them alone; a batch
        without any gives exactly zero (not NaN), still attached to the graph.
        """
        labelled = torch.isfinite(mos)
        if bool(labelled.all()):
            return self.loss(score, mos)
        if not bool(labelled.any()):
            zero = score.sum() * 0.0
            return zero, {key: zero for key in self.loss.keys}
        return self.loss(score[labelled], mos[labelled])

    def distill_loss(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of label, teacher-score, feature and distribution terms, with each part.

        Label terms cover the labelled rows (:meth:`masked_label_loss`); teacher terms cover every row.
        """
        total, parts = self.masked_label_loss(out["score"], batch["mos"].float())
        parts = {f"label/{k}": v for k, v in parts.items()}
        targets = self.targets(batch)
        if self.score_kd is not None:
            value, sub = self.score_kd(out["score"], targets["score"])
            total = total + value
            parts.update({f"kd_score/{k}": v for k, v in sub.items()})
        for name, term in zip(self.feature_names, self.feature_kd, strict=True):
            value, _ = term(out["features"][name].float(), targets[name])
            total = total + value
            parts[f"kd_feature/{name}"] = value
        if self.dist_kd is not None:
            if out.get("dist") is None or "dist" not in targets:
                raise ConfigError("distill.dist: needs a student with a distribution head and a teacher that outputs one")
            value, sub = self.dist_kd(out["dist"], targets["dist"])
            total = total + value
            parts.update({f"kd_dist/{k}": v for k, v in sub.items()})
        return total, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model(batch["image"])
        total, parts = self.distill_loss(out, batch)
        n = len(out["score"])
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=n)
        return total
