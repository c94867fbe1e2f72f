"""Training checkpoints that survive faults and resume bit for bit.

Lightning checkpoints the weights, optimiser, schedulers and loop progress. For a run killed at any
point and rerun to end with the same weights and metrics as an uninterrupted run, three more things
are needed, and this module adds them:

- **Atomic files** (:class:`AtomicCheckpointIO`): Lightning writes a checkpoint straight to its final
  path, so a full disk left a torn ``latest.ckpt`` there that the next resume failed on. Here it is
  written beside it and renamed; a failed write is one line naming the file; a checkpoint that cannot
  be read is one line saying what to do.
- **The random state** (:class:`RunState`): the generators (torch, numpy, random) are saved with the
  checkpoint and restored with it. The order of the next epoch's samples and its random views are
  drawn from them, so without this a resumed run trains on other batches.
- **The metrics history** (:class:`HistoryCSVLogger`): Lightning's CSV logger deletes ``metrics.csv``
  when a run restarts. Here the rows logged up to a checkpoint travel inside it, and the file is
  rewritten (atomically) from them, so a resumed run keeps every epoch and no row of the killed part.

``latest.ckpt`` is written by :class:`LatestCheckpoint` when an epoch is over *and* everything it logs
has been logged (Lightning's own epoch-end save comes before the epoch's training averages are logged,
which a resumed run would then never log); its resume point is therefore an epoch boundary.
"""
from __future__ import annotations

import csv
import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from kdiqa.errors import CheckpointError, first_line
from kdiqa.io import atomic_path

CHECKPOINT = "a training checkpoint"


def checkpoint_error(path: str | os.PathLike, exc: BaseException) -> CheckpointError:
    """One line for a checkpoint that cannot be read, with the way out."""
    return CheckpointError(
        f"{path}: cannot read this training checkpoint ({type(exc).__name__}: {first_line(exc, with_type=False)[:160]}); it is damaged "
        "(e.g. a disk filled up while it was written by an older kdiqa): delete it to train this stage from the start"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing each file atomically and failing in one line."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()  # serialised first (as Lightning does), then written under a temporary name
        torch.save(checkpoint, buffer)
        with atomic_path(path, CHECKPOINT) as tmp:
            tmp.write_bytes(buffer.getbuffer())

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: training checkpoint not found") from None
        except Exception as exc:  # noqa: BLE001 - a torn file raises many different types
            raise checkpoint_error(path, exc) from None


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents (weights only, nothing executed), or a one-line CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: training checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001
        raise checkpoint_error(path, exc) from None


# ----------------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """Every generator a training step or a data loader draws from, as plain data (``weights_only``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ metrics
class _HistoryWriter:
    """Every metrics row of the run, kept in memory and written whole, atomically, on each save."""

    METRICS = "metrics.csv"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.path = Path(log_dir) / self.METRICS
        self.metrics: list[dict[str, Any]] = []  # the whole history, not only rows since the last save
        self.hparams: dict[str, Any] = {}

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)

    def save(self) -> None:
        if not self.metrics:
            return
        keys = sorted(set().union(*self.metrics))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.metrics)
        with atomic_path(self.path, "the training log") as tmp:
            tmp.write_text(buffer.getvalue())


class HistoryCSVLogger(CSVLogger):
    """Lightning's CSV logger (same folder, same columns), keeping its whole history across resumes."""

    @property
    def experiment(self) -> _HistoryWriter:  # type: ignore[override]
        if self._experiment is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir)
        return self._experiment

    def log_hyperparams(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        pass  # recipes are saved whole in the run folder; nothing to add here

    def history(self) -> list[dict[str, Any]]:
        return [dict(row) for row in self.experiment.metrics] if rank_zero_only.rank == 0 else []

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Replace what the file holds by the rows logged up to the checkpoint being resumed."""
        if rank_zero_only.rank == 0:
            self.experiment.metrics = [dict(row) for row in rows]
            self.experiment.save()


# ---------------------------------------------------------------------------------- callbacks
class RunState(Callback):
    """Saves and restores, with every checkpoint, the random state and the metrics history."""

    def __init__(self, loggers: list[Any]) -> None:
        self.loggers = [lg for lg in loggers if isinstance(lg, HistoryCSVLogger)]
        self.resumed_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return "kdiqa.RunState"

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.resumed_epoch = int(checkpoint.get("epoch", 0))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng(), "metrics": [lg.history() for lg in self.loggers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored here, before the fit loop creates the epoch's data iterator, which draws from it.
        restore_rng(state_dict["rng"])
        for logger, rows in zip(self.loggers, state_dict.get("metrics", []), strict=False):
            logger.restore(rows)


BOUNDARY = "kdiqa_epoch_boundary"  # marks a checkpoint written between two epochs (LatestCheckpoint)


class LatestCheckpoint(Callback):
    """``latest.ckpt``: written once an epoch and everything it logs are done, and when training ends.

    An epoch is over for good when the next one starts (its validation, checkpoint choice and epoch
    averages are then all logged), so that is when the file is written; ``on_train_end`` writes the
    final state, from which a rerun has nothing left to train.

    Lightning resumes a checkpoint by "restarting" the loop step it was written in, a machinery built
    for checkpoints written inside an epoch: from one written at an epoch's start it skipped the epoch,
    or counted a step twice. So the file records the state *between* the two epochs, marked as such,
    and a fit resuming from it simply continues from there (:func:`resume_between_epochs`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._first_epoch_of_this_fit = True
        self._saving = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        resume_between_epochs(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_epoch_of_this_fit = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._first_epoch_of_this_fit:  # nothing new since the start (or since the checkpoint resumed)
            self._first_epoch_of_this_fit = False
            return
        self._save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._saving:
            return  # another callback's checkpoint (the validation-best one)
        loops = checkpoint["loops"]["fit_loop"]
        for counts in loops["epoch_progress"].values():  # the next epoch is not "ready" yet: it has not begun
            counts["ready"] = counts["started"] = counts["processed"] = counts["completed"]
        batches = loops["epoch_loop.batch_progress"]
        batches["current"] = {key: 0 for key in batches["current"]}
        batches["is_last_batch"] = False
        loops["state_dict"][BOUNDARY] = True

    def _save(self, trainer: pl.Trainer) -> None:
        self._saving = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
        finally:
            self._saving = False
        for logger in trainer.loggers:
            logger.save()  # the file on disk follows the checkpoint's history


def resume_between_epochs(trainer: pl.Trainer) -> None:
    """Make ``trainer`` continue, not "restart", from a checkpoint :class:`LatestCheckpoint` wrote.

    After loading such a checkpoint the loops are told they are not restarting: their counters already
    say "epoch N is done, N+1 not begun", which is exactly the state of an uninterrupted run at that
    point, so the fit goes on as that run did (same steps, same logged step numbers). Other
    checkpoints keep Lightning's own behaviour.
    """
    loop = trainer.fit_loop
    if getattr(loop, "_kdiqa_patched", False):
        return
    original = loop.load_state_dict

    def load_state_dict(state_dict: dict, prefix: str = "") -> None:
        original(state_dict, prefix)
        if state_dict.get(prefix + "state_dict", {}).get(BOUNDARY):
            loop.restarting = False  # and every child loop; is_resuming stays set for the data iterator

    loop.load_state_dict = load_state_dict  # type: ignore[method-assign]
    loop._kdiqa_patched = True  # type: ignore[attr-defined]


def start_epoch(trainer: Any) -> int:
    """The epoch a fit's first training loader serves, for samplers whose order depends on the epoch.

    Why not ``trainer.current_epoch``: Lightning makes that loader (and its workers draw their first
    indices) while it estimates the number of steps, before it restores the loops of a resumed fit,
    when the epoch still reads 0; the callbacks are restored by then (:class:`RunState`).
    """
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, RunState) and callback.resumed_epoch is not None:
            return callback.resumed_epoch
    return int(getattr(trainer, "current_epoch", 0) or 0)
