"""From a recipe's data + views sections to DataLoaders.

The dataset is resolved through the registry, split once, and every split is served through the same
view sampler the cache uses, so a student can be fed exactly the views its teacher saw.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from kdiqa.checkpoints import start_epoch
from kdiqa.config.schema import DataConfig, ViewConfig
from kdiqa.data.images import load_image
from kdiqa.data.sample import SPLITS, IQASample, LoadedDataset
from kdiqa.data.splits import assign_splits, split_summary
from kdiqa.data.unlabelled import Pool, load_pool, readable
from kdiqa.data.views import ViewParams, ViewSampler
from kdiqa.errors import ConfigError, DataError
from kdiqa.registry import DATASETS


def load_dataset(cfg: DataConfig) -> LoadedDataset:
    """Resolve ``data.name`` through the registry and read the dataset in its official format."""
    loader = DATASETS.get(cfg.name)
    kwargs: dict[str, Any] = dict(cfg.options)
    if cfg.root is not None:
        kwargs["root"] = cfg.root
    try:
        return loader(on_bad_row=cfg.on_bad_row, **kwargs)
    except TypeError as exc:
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
            raise ConfigError(f"data.options: {exc} (dataset {cfg.name!r})") from None
        raise


def make_sampler(views: ViewConfig, train: bool) -> ViewSampler:
    if train:
        return ViewSampler(views.size, train=True, scale=tuple(views.train_scale), ratio=tuple(views.train_ratio), flip=views.flip)
    return ViewSampler(views.size, train=False)


class IQADataset(Dataset):
    """Samples of one split, served as views.

    A training view is drawn from torch's RNG (seeded per worker by Lightning's ``seed_everything``),
    so runs are repeatable for a seed while views still change every epoch. Each item also returns the
    view's parameters so that it can be replayed.
    """

    def __init__(self, samples: Sequence[IQASample], sampler: ViewSampler):
        self.samples = list(samples)
        self.sampler = sampler
        # label distributions (AVA votes) go into the batch only when every sample has one, so batches collate
        self.has_dist = bool(self.samples) and all(s.dist is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def view(self, index: int, params: ViewParams | None = None) -> tuple[torch.Tensor, ViewParams]:
        image = load_image(self.samples[index].path)
        if params is None:
            if self.sampler.train:
                rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
                params = self.sampler.sample(image.size, rng)
            else:
                params = self.sampler.eval_params()
        return self.sampler.apply(image, params), params

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, params = self.view(index)
        item = {
            "image": image,
            "mos": torch.tensor(sample.mos, dtype=torch.float32),
            "index": index,
            "view": torch.from_numpy(params.to_array()),
        }
        if self.has_dist:
            item["dist"] = torch.tensor(sample.dist, dtype=torch.float32)
        return item


class IQADataModule(pl.LightningDataModule):
    """Owns the data: loading, splitting, views and loaders."""

    def __init__(self, data: DataConfig, views: ViewConfig):
        super().__init__()
        self.data_cfg = data
        self.views = views
        self.splits: dict[str, list[IQASample]] = {}
        self.dataset: LoadedDataset | None = None
        self._pool: Pool | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = load_dataset(self.data_cfg)
            split = self.data_cfg.split
            samples = assign_splits(self.dataset, ratios=tuple(split.ratios), seed=split.seed, repeat=split.repeat,
                                    policy=split.policy)
            self.splits = {name: [s for s in samples if s.split == name] for name in SPLITS}

    def pool(self) -> Pool | None:
        """The unlabelled pool (``data.unlabelled``), loaded on first use: only distillation trains on it."""
        self.setup()
        if self._pool is None and self.data_cfg.unlabelled.enabled:
            assert self.dataset is not None
            self._pool = load_pool(self.data_cfg, self.dataset.samples)
        return self._pool

    def distill_samples(self, check_pool: bool = False) -> list[IQASample]:
        """The labelled training samples, then the pool: what the cache indexes and the KD student sees.

        ``check_pool`` decodes the pool once and drops what does not decode (for online distillation;
        the cache stage finds and skips such images itself, as it decodes them anyway).
        """
        pool = self.pool()
        if pool is None:
            return list(self.splits["train"])
        return list(self.splits["train"]) + (readable(pool.samples) if check_pool else pool.samples)

    def summary(self) -> dict[str, Any]:
        """Labelled counts and MOS ranges per split, plus ``unlabelled`` (the pool) when there is one."""
        self.setup()
        assert self.dataset is not None
        info = split_summary([s for split in SPLITS for s in self.splits[split]])
        info.update(name=self.dataset.name, skipped=len(self.dataset.skipped))
        pool = self.pool()
        if pool is not None:
            info["unlabelled"] = pool.summary()
        return info

    def split_dataset(self, split: str, train_views: bool | None = None) -> IQADataset:
        self.setup()
        samples = self.splits.get(split, [])
        if not samples:
            raise DataError(f"dataset {self.data_cfg.name!r} has no {split!r} samples (check data.split)")
        return IQADataset(samples, make_sampler(self.views, split == "train" if train_views is None else train_views))

    def _eval_loader(self, split: str) -> DataLoader:
        """Evaluation views are fixed, so the loader gets a generator of its own: drawing its workers'
        seeds from the global one would make the training that follows depend on whether this loader's
        persistent workers were started in this process (not so after a resume)."""
        workers = self.data_cfg.num_workers
        return DataLoader(
            self.split_dataset(split),
            batch_size=self.data_cfg.eval_batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=torch.Generator(),
        )

    def training_loader(self, dataset: Dataset) -> DataLoader:
        """The training loader over ``dataset``; ``data.shuffle`` holds on one process and under DDP.

        Why the explicit sampler under DDP: Lightning replaces a training loader's sampler with a
        *shuffling* DistributedSampler whatever the loader asked for, and keeps one that is already
        distributed. Seeded from torch's seed (``seed_everything``), so every rank draws the same order.

        Workers are not persistent: each epoch's workers are seeded from the main process's generator,
        which a checkpoint saves and restores; persistent workers would carry a random state no
        checkpoint holds, and a resumed run would draw other views than an uninterrupted one.
        """
        cfg = self.data_cfg
        trainer = self.trainer  # set by Lightning (or fit_validation_best) once a fit is under way
        sampler = None
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                shuffle=cfg.shuffle, seed=torch.initial_seed() % 2**31,
            )
            sampler.set_epoch(start_epoch(trainer))  # a resumed fit's first epoch is not 0
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=cfg.shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=cfg.num_workers,
            drop_last=len(dataset) > cfg.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self.training_loader(self.split_dataset("train"))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
