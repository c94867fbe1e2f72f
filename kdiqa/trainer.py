"""Build a Lightning Trainer from a recipe: loggers, checkpoints and devices in one place."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from kdiqa.checkpoints import AtomicCheckpointIO, HistoryCSVLogger, LatestCheckpoint, RunState, load_state
from kdiqa.config.schema import TrainerConfig
from kdiqa.console import use_plain_progress
from kdiqa.errors import CheckpointError, ConfigError, first_line
from kdiqa.run import RunDir


def merge_trainer(base: TrainerConfig, overrides: Mapping[str, Any]) -> TrainerConfig:
    """A stage's ``trainer:`` overrides on top of the recipe's trainer section (both checked at load)."""
    return dataclasses.replace(base, **dict(overrides))


def check_val_interval(cfg: TrainerConfig, train_batches: int, at: str) -> None:
    """A step count for ``val_check_interval`` must fit in one epoch (unless validation is step-based).

    Why here: the limit depends on the data, so the recipe cannot be checked at load time, and
    Lightning only finds out deep inside ``fit`` with a traceback.
    """
    interval = cfg.val_check_interval
    if isinstance(interval, bool) or not isinstance(interval, int) or cfg.check_val_every_n_epoch is None:
        return
    limit = cfg.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        train_batches = min(train_batches, limit)
    elif isinstance(limit, float):
        train_batches = int(train_batches * limit)
    if interval > train_batches:
        raise ConfigError(
            f"{at}.val_check_interval: {interval} steps is more than one epoch ({train_batches} training batches); "
            f"use at most {train_batches}, or a fraction of an epoch such as 0.5"
        )


def make_loggers(cfg: TrainerConfig, run: RunDir, name: str) -> list[Logger]:
    if cfg.logger == "none":
        return []
    loggers: list[Logger] = [HistoryCSVLogger(str(run.root), name=run.LOGS, version=name)]
    if cfg.logger == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("trainer.logger: 'tensorboard' needs the tensorboard package (pip install 'kdiqa[tensorboard]')") from None
        loggers.append(TensorBoardLogger(str(run.root), name=run.TENSORBOARD, version=name))
    return loggers


def make_trainer(cfg: TrainerConfig, run: RunDir, name: str, monitor: str) -> tuple[pl.Trainer, ModelCheckpoint]:
    """A Trainer that keeps the best checkpoint by ``monitor`` on the validation split, plus the latest.

    The latest is its own callback: Lightning's ``save_last`` only writes when the monitored
    checkpoint improved, which would leave a resumed run restarting from a stale epoch. Checkpoints
    are written atomically and carry the random state and the metrics history, so a resumed run
    continues exactly as the uninterrupted one would have (:mod:`kdiqa.checkpoints`).
    """
    mode = "min" if monitor.endswith("loss") else "max"
    checkpoint = ModelCheckpoint(
        dirpath=str(run.checkpoints(name)),
        filename="best-{epoch:03d}-{step:06d}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # a rerun rewrites its epoch's file, instead of leaving a stray -v1 beside it
    )
    loggers = make_loggers(cfg, run, name)
    latest = LatestCheckpoint(run.latest_checkpoint(name))
    callbacks: list[pl.Callback] = [checkpoint, latest, RunState(loggers)]
    if cfg.progress_bar and use_plain_progress():
        callbacks.append(PlainProgress(name))
    trainer = pl.Trainer(
        default_root_dir=str(run.root),
        max_epochs=cfg.max_epochs,
        max_steps=cfg.max_steps,
        max_time=cfg.max_time,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        val_check_interval=cfg.val_check_interval,
        log_every_n_steps=cfg.log_every_n_steps,
        gradient_clip_val=cfg.gradient_clip_val,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        deterministic=cfg.deterministic,
        num_sanity_val_steps=0,
        sync_batchnorm=cfg.sync_batchnorm,
    )
    return trainer, checkpoint


def fit_validation_best(module: pl.LightningModule, dm: pl.LightningDataModule, cfg: TrainerConfig, run: RunDir,
                        name: str, monitor: str, at: str) -> str:
    """Fit ``module`` (resuming from this run's latest checkpoint), load the validation-best weights
    into it and return that checkpoint's path. Ranks other than 0 exit after the fit.

    One place for what every fitting stage (teacher, KD student, label-only student) does around
    ``trainer.fit``.
    """
    try:
        trainer, checkpoint = make_trainer(cfg, run, name, monitor)
    except MisconfigurationException as exc:  # e.g. a precision this machine cannot run
        raise ConfigError(f"{at}: {first_line(exc, with_type=False)}") from None
    dm.trainer = trainer  # Lightning attaches it in fit; here first, so the count below is per process
    check_val_interval(cfg, len(dm.train_dataloader()), at)
    resume = run.latest_checkpoint(name)
    resume = resume if resume.is_file() else None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    except MisconfigurationException as exc:
        # typically a checkpoint of an earlier run of this stage that the recipe no longer fits
        hint = (f"; it was resuming {resume}, from an earlier run of this stage with other settings: "
                "delete that file to train this stage from the start") if resume else ""
        raise ConfigError(f"{at}: {first_line(exc, with_type=False).rstrip('.')}{hint}") from None
    if not trainer.is_global_zero:  # the other ranks' work ended with the fit: only rank 0 saves, evaluates, reports
        raise SystemExit(0)
    best = checkpoint.best_model_path
    if not best:
        raise CheckpointError(f"{checkpoint.dirpath}: no validation checkpoint was saved (is the val split empty?)")
    module.load_state_dict(load_state(best)["state_dict"])
    return best


class PlainProgress(ProgressBar):
    """Lightning progress as plain lines (one every ``every`` seconds and one per epoch), for logs.

    Used instead of the bar when stdout is not a terminal: ``<name> epoch 2/10 step 140/700 train/loss
    0.0123 (35 s)``, then the validation metrics when an epoch ends.
    """

    def __init__(self, name: str, every: float = 30.0) -> None:
        super().__init__()
        self.name = name
        self.every = every
        self._enabled = True
        self._start = self._last = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        if trainer.global_step:
            self._say(f"resumed at epoch {trainer.current_epoch}, step {trainer.global_step}", trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._say(self._metrics(trainer, "train/"), trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._say(self._metrics(trainer, "val/"), trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._enabled and trainer.is_global_zero:
            print(f"{self.name}: done, {trainer.global_step} steps ({time.monotonic() - self._start:.0f} s)", flush=True)

    def _metrics(self, trainer: pl.Trainer, prefix: str) -> str:
        shown = []
        for name in ("loss", "srcc", "plcc"):
            value = trainer.callback_metrics.get(prefix + name)
            if value is not None:
                shown.append(f"{prefix}{name} {float(value):.4f}")
        return ", ".join(shown)

    def _say(self, what: str, trainer: pl.Trainer) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        line = (f"{self.name}: epoch {trainer.current_epoch + 1}/{epochs} step {trainer.global_step}/{steps}"
                f"{', ' + what if what else ''} ({time.monotonic() - self._start:.0f} s)")
        print(line, flush=True)
