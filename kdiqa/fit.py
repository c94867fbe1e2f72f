"""Fitting a model to MOS labels: the Lightning step logic shared by teachers and label-only students.

The module holds step logic only; the Trainer owns loops, devices, precision and checkpoints. The
checkpoint is chosen on the validation split and evaluated once on test, never picked on test.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from kdiqa.config.schema import FitConfig, OptimConfig
from kdiqa.errors import ConfigError
from kdiqa.losses import WeightedLoss
from kdiqa.measure import predicted_dist, predicted_score
from kdiqa.metrics import iqa_metrics


def build_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> dict | None:
    """Step-wise schedules, so a run cut short by ``max_time`` or ``max_steps`` still decays properly."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.scheduler == "none" and warmup == 0:
        return None
    milestones = [m * steps_per_epoch for m in cfg.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "multistep":
            return cfg.gamma ** sum(step >= m for m in milestones)
        if cfg.scheduler == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": "step"}


class MOSFitModule(pl.LightningModule):
    """Train ``model`` so that its score matches the MOS; report IQA metrics per split."""

    def __init__(self, model: nn.Module, fit: FitConfig):
        super().__init__()
        self.model = model
        self.fit_cfg = fit
        # ``loss`` compares scores with the MOS (what subclasses reuse); terms with ``output: dist`` compare
        # the model's score distribution with the label distribution (NIMA/TANet's EMD on AVA votes)
        self.loss = WeightedLoss([(t.name, t.weight, dict(t.options)) for t in fit.losses if t.output == "score"])
        dist_terms = [(t.name, t.weight, dict(t.options)) for t in fit.losses if t.output == "dist"]
        self.dist_loss = WeightedLoss(dist_terms) if dist_terms else None
        self._outputs: list[tuple[torch.Tensor, ...]] = []  # one validation epoch's (score, mos[, dist, label dist])

    def forward(self, images: torch.Tensor) -> Any:
        return self.model(images)

    def _dists(self, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(predicted, label) distributions when a loss needs them; a one-line error when either is missing."""
        if self.dist_loss is None:
            return None, None
        pred = predicted_dist(out)
        if pred is None:
            raise ConfigError("fit.losses: a term with output: dist needs a model with a score distribution "
                              "(a teacher that outputs one, or a student with head: dist)")
        if "dist" not in batch:
            raise ConfigError("fit.losses: a term with output: dist needs a dataset with label distributions "
                              "(e.g. ava's vote counts); this dataset has none")
        return pred, batch["dist"]

    def label_loss(
        self, score: torch.Tensor, mos: torch.Tensor, dist: torch.Tensor | None = None, label_dist: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score terms against the MOS plus distribution terms (logged as ``dist/<name>``)."""
        total, parts = self.loss(score, mos) if len(self.loss.terms) else (score.sum() * 0.0, {})
        if self.dist_loss is not None and dist is not None and label_dist is not None:
            value, sub = self.dist_loss(dist.float(), label_dist.float())
            total = total + value
            parts = {**parts, **{f"dist/{k}": v for k, v in sub.items()}}
        return total, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        score = predicted_score(out)
        total, parts = self.label_loss(score, batch["mos"], *self._dists(out, batch))
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(score))
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=len(score))
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch["image"])
        score = predicted_score(out)
        kept: tuple[torch.Tensor, ...] = (score.detach().float(), batch["mos"].detach().float())
        dist, label_dist = self._dists(out, batch)
        if dist is not None and label_dist is not None:
            kept += (dist.detach().float(), label_dist.detach().float())
        self._outputs.append(kept)

    def on_validation_epoch_end(self) -> None:
        """Metrics over the whole validation split (test is evaluated once, after the fit: :mod:`kdiqa.evaluate`)."""
        outputs, self._outputs = self._outputs, []
        if not outputs:
            return
        pred = torch.cat([o[0] for o in outputs])
        target = torch.cat([o[1] for o in outputs])
        dists = [torch.cat([o[i] for o in outputs]) for i in (2, 3)] if len(outputs[0]) == 4 else [None, None]
        if self.trainer.world_size > 1:  # metrics over the whole split, not per rank
            pred = self.all_gather(pred).reshape(-1)
            target = self.all_gather(target).reshape(-1)
            dists = [None if d is None else self.all_gather(d).reshape(-1, d.shape[-1]) for d in dists]
        loss, _ = self.label_loss(pred, target, *dists)
        metrics = iqa_metrics(pred.cpu().numpy(), target.cpu().numpy())
        self.log("val/loss", loss, sync_dist=False)
        for key in ("srcc", "plcc", "krcc", "plcc_fitted", "rmse"):
            value = metrics[key]
            self.log(f"val/{key}", float(value) if np.isfinite(value) else 0.0, prog_bar=key == "srcc")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.fit_cfg.optim)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        scheduler = build_scheduler(optimizer, self.fit_cfg.optim, total, max(1, total // epochs))
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}
