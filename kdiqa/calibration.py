"""The images a reduced-precision export is calibrated on and checked on, both named by a recipe.

Calibration (int8): activation ranges are measured on *training* views, rendered as the student saw
them in training: the cached views when the run has a cache (the very crops distillation replayed,
labelled and pool images alike), else views of the recipe's training split drawn by the recipe's view
sampler. ``count`` views are drawn without replacement, seeded by the recipe's ``seed``, so an export
is repeatable. Views are rendered at the student's input size and one batch at a time, so a large
``count`` at 384 px costs time, not memory.

The accuracy check (int8 and fp16): the float student (PyTorch) and the exported file score the same
held-out images (the recipe's ``test`` split by default, or ``val``; the evaluation view, as ``kdiqa
eval`` renders it), and their SRCC/PLCC against MOS are compared. ``passed`` is
``|ΔSRCC| <= max_srcc_drop``: a gain as large as the allowed loss also fails, because it means the
ranking changed that much, and on another split it could go the other way.

Which recipe: ``--recipe`` when given, else the ``recipe.yaml`` of the run folder the student was saved
in (``<run>/students/<key>/``). A student found nowhere near a recipe is a one-line error: there is no
honest way to calibrate or check it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdiqa.cache import CachedViews
from kdiqa.config import Recipe, load_recipe
from kdiqa.data.datamodule import IQADataModule, IQADataset, make_sampler
from kdiqa.data.images import load_image
from kdiqa.data.views import ViewSampler
from kdiqa.errors import KdiqaError
from kdiqa.metrics import plcc, srcc
from kdiqa.run import RunDir

# a few hundred, as ONNX Runtime suggests; the quickstart's |ΔSRCC| was 0.0014 / 0.0002 / 0.0024 / 0.0005
# with 16 / 64 / 256 / 1024 views, so the count matters less than the views being the training ones
DEFAULT_CALIBRATION = 256
CHECK_SPLITS = ("test", "val")
MAX_SRCC_DROP = 0.01


class CalibrationError(KdiqaError):
    """No recipe, or no data in it, to calibrate or check a reduced-precision export on."""


@dataclasses.dataclass
class ExportData:
    """The recipe an export takes its data from, where it came from, and its run folder (for the cache)."""

    recipe: Recipe
    source: str
    run: RunDir


def find_export_data(checkpoint: str | Path, recipe: str | Path | None, why: str) -> ExportData:
    """``recipe`` if given, else the recipe of the run folder ``checkpoint`` sits in; ``why`` names the
    option that needs it, for the error message."""
    checkpoint = Path(checkpoint)
    run_root = checkpoint.parent.parent if checkpoint.parent.name == "students" else None
    if run_root is not None and not (run_root / "recipe.yaml").is_file():
        run_root = None
    if recipe is None:
        if run_root is None:
            raise CalibrationError(
                f"{why}: {checkpoint} is not in a run folder (no ../../recipe.yaml), so there are no training views "
                "to calibrate on nor held-out images to check on; pass --recipe RECIPE"
            )
        recipe = run_root / "recipe.yaml"
    loaded = load_recipe(recipe, needs=("data", "views", "cache"))
    run = RunDir(run_root, loaded.teacher.checkpoint or None, loaded.cache.path or None) if run_root else RunDir.of(loaded)
    return ExportData(loaded, str(recipe), run)


def _sampler(data: ExportData, size: tuple[int, int], train: bool) -> ViewSampler:
    """The recipe's view sampler, at the student's input size."""
    return make_sampler(dataclasses.replace(data.recipe.views, size=size), train)


class CalibrationViews:
    """``count`` training views (cached ones when the run has a cache), rendered lazily in batches."""

    def __init__(self, data: ExportData, size: tuple[int, int], count: int = DEFAULT_CALIBRATION):
        if count < 1:
            raise CalibrationError(f"calibration: need at least 1 view, got {count}")
        self.size = size
        recipe = data.recipe
        sampler = _sampler(data, size, train=True)
        dm = IQADataModule(recipe.data, recipe.views)
        dm.setup()
        rng = np.random.default_rng(recipe.seed)
        self.cached: CachedViews | None = None
        if data.run.cache.is_file():
            self.cached = CachedViews(data.run.cache, dm.distill_samples(), sampler, features=[])
            self.items = np.sort(rng.choice(len(self.cached), size=min(count, len(self.cached)), replace=False))
            self.source = {"views": "cached", "cache": str(data.run.cache)}
        else:
            samples = dm.splits["train"]
            if not samples:
                raise CalibrationError(f"{data.source}: the recipe's train split is empty: no views to calibrate on")
            self.samples, self.sampler = samples, sampler
            order = np.concatenate([rng.permutation(len(samples)) for _ in range(math.ceil(count / len(samples)))])
            self.items = order[:count]
            self.seeds = rng.integers(0, 2**31, size=count)
            self.source = {"views": "sampled from the train split", "sampler": sampler.as_dict()}
        self.source.update(recipe=data.source, seed=recipe.seed, count=len(self.items))

    def __len__(self) -> int:
        return len(self.items)

    def view(self, i: int) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[int(self.items[i])]["image"]
        image = load_image(self.samples[int(self.items[i])].path)
        params = self.sampler.sample(image.size, np.random.default_rng(int(self.seeds[i])))
        return self.sampler.apply(image, params)

    def batches(self, batch: int, fixed: bool) -> Iterator[np.ndarray]:
        """Float32 NCHW batches of ``batch`` views; with ``fixed``, the last is padded by repeating its
        final view (a fixed-batch graph takes no other size)."""
        try:
            for start in range(0, len(self), batch):
                views = [self.view(i) for i in range(start, min(start + batch, len(self)))]
                if fixed:
                    views += [views[-1]] * (batch - len(views))
                yield torch.stack(views).numpy()
        finally:
            if self.cached is not None:
                self.cached.close()


def heldout_images(data: ExportData, size: tuple[int, int], split: str = "test") -> IQADataset:
    """The recipe's ``split`` (``test`` or ``val``), in the evaluation view at the student's size."""
    if split not in CHECK_SPLITS:
        raise CalibrationError(f"accuracy check: split must be one of {', '.join(CHECK_SPLITS)}, got {split!r}")
    dm = IQADataModule(data.recipe.data, data.recipe.views)
    dm.setup()
    samples = dm.splits.get(split) or []
    if len(samples) < 3:
        raise CalibrationError(f"{data.source}: the recipe's {split} split has {len(samples)} images; "
                               "the accuracy check needs at least 3 (choose the other split with --check-split)")
    return IQADataset(samples, _sampler(data, size, train=False))


@torch.no_grad()
def accuracy_check(student: nn.Module, exported: Any, images: IQADataset, max_srcc_drop: float = MAX_SRCC_DROP,
                   batch: int = 32) -> dict[str, Any]:
    """SRCC/PLCC against MOS of the float student and of the exported model, on the same images."""
    ref, got, mos = [], [], []
    for start in range(0, len(images), batch):
        items = [images[i] for i in range(start, min(start + batch, len(images)))]
        x = torch.stack([item["image"] for item in items])
        ref.append(student(x)["score"].float().numpy())
        got.append(exported(x)["score"].float().numpy())
        mos.extend(float(item["mos"]) for item in items)
    a, b, y = np.concatenate(ref), np.concatenate(got), np.asarray(mos)
    result = {
        "images": len(y),
        "float": {"srcc": srcc(a, y), "plcc": plcc(a, y)},
        "exported": {"srcc": srcc(b, y), "plcc": plcc(b, y)},
    }
    result["delta_srcc"] = result["exported"]["srcc"] - result["float"]["srcc"]
    result["delta_plcc"] = result["exported"]["plcc"] - result["float"]["plcc"]
    result["rank_agreement_srcc"] = srcc(b, a)  # how alike the two rank the images, whatever the MOS says
    result["max_abs_score_diff"] = float(np.max(np.abs(a - b)))
    result["max_srcc_drop"] = max_srcc_drop
    result["passed"] = bool(abs(result["delta_srcc"]) <= max_srcc_drop)  # NaN (a constant model) fails
    return result
