"""Where does a teacher keep the quality information? A linear probe of each feature it exposes.

Runs the recipe's teacher — fitted (``--checkpoint`` folder) or freshly built from the recipe — over
``--images`` training views and every val/test view (evaluation views, no augmentation), pools each
feature map per channel (mean, max and standard deviation over positions), fits a ridge regression
to MOS on the training views and reports the val/test SRCC of its predictions. ``λ`` is chosen on val
from a small grid, so the val column is optimistic; the test column is not.

Features: everything the teacher returns (for DP-IQA ``quality_map`` and ``unet.up_blocks.*``) plus the
outputs of the modules named by ``--modules`` (a module returning a list, like the T2I image adapter,
contributes all its maps). This tells a distillation user which taps carry signal, and it shows where a
teacher loses it: for the tiny DP-IQA teacher with random weights, the image adapter's maps probe far
better than the U-Net features that the adapter's residuals are added into.

    .venv/bin/python benchmarks/feature_probe.py --recipe dpiqa/tiny
    .venv/bin/python benchmarks/feature_probe.py --recipe dpiqa/tiny --checkpoint runs/dpiqa-tiny/teacher
"""
from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from kdiqa.config import load_recipe
from kdiqa.data.datamodule import IQADataModule
from kdiqa.metrics import srcc
from kdiqa.models import load_model
from kdiqa.registry import TEACHERS

LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
DEFAULT_MODULES = ("image_adapter", "unet.conv_in", "unet.down_blocks.0")


def pooled(value: Any) -> torch.Tensor | None:
    """Per-channel mean, max and std over positions of every 4-d map in ``value`` (tensor, tuple, list)."""
    maps = [value] if isinstance(value, torch.Tensor) else [v for v in value if isinstance(v, torch.Tensor)] if isinstance(value, (list, tuple)) else []
    maps = [m for m in maps if m.dim() == 4]
    if not maps:
        return None
    return torch.cat([torch.cat([m.mean((2, 3)), m.amax((2, 3)), m.std((2, 3))], dim=1) for m in maps], dim=1)


@torch.no_grad()
def collect(teacher: nn.Module, loader: Iterable[dict[str, Any]], modules: list[str], limit: int | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in modules:
        try:
            module = teacher.get_submodule(name)
        except AttributeError:
            print(f"(no module {name!r} in this teacher: skipped)")
            continue
        handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out)))
    rows: dict[str, list[torch.Tensor]] = {}
    mos: list[torch.Tensor] = []
    seen = 0
    try:
        for batch in loader:
            captured.clear()
            out = teacher(batch["image"])
            named = {f"module:{k}": v for k, v in captured.items()}
            named.update(out.features)
            for key, value in named.items():
                p = pooled(value)
                if p is not None:
                    rows.setdefault(key, []).append(p.float())
            mos.append(batch["mos"].float())
            seen += len(batch["image"])
            if limit is not None and seen >= limit:
                break
    finally:
        for handle in handles:
            handle.remove()
    return {k: torch.cat(v).numpy() for k, v in rows.items()}, torch.cat(mos).numpy()


def ridge_probe(train: np.ndarray, y: np.ndarray, val: np.ndarray, y_val: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> tuple[float, float]:
    """Ridge on standardised features, λ picked by val SRCC; returns (val SRCC, test SRCC)."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    a, v, t = (train - mean) / std, (val - mean) / std, (test - mean) / std
    best = (-2.0, 0.0)
    for lam in LAMBDAS:
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y - y.mean()))
        best = max(best, (srcc(v @ w, y_val), srcc(t @ w, y_test)))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="dpiqa/tiny")
    parser.add_argument("--checkpoint", help="a fitted teacher folder (default: the recipe's teacher, freshly built)")
    parser.add_argument("--images", type=int, default=2000, help="training views for the ridge fit")
    parser.add_argument("--modules", nargs="*", default=list(DEFAULT_MODULES), help="extra module outputs to probe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="recipe overrides")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    torch.manual_seed(recipe.seed)
    dm = IQADataModule(recipe.data, recipe.views)
    dm.setup()
    if args.checkpoint:
        teacher = load_model(Path(args.checkpoint))
    else:
        teacher = TEACHERS.build(recipe.teacher.name, **recipe.teacher.options)
        teacher.prepare(dm.train_dataloader())
    teacher.eval()
    train_loader = DataLoader(dm.split_dataset("train", train_views=False), batch_size=recipe.data.eval_batch_size)
    feats, y = collect(teacher, train_loader, args.modules, args.images)
    val, y_val = collect(teacher, dm.val_dataloader(), args.modules, None)
    test, y_test = collect(teacher, dm.test_dataloader(), args.modules, None)
    source = args.checkpoint or f"{recipe.teacher.name} built from {args.recipe} (untrained)"
    print(f"linear probe of {source}: ridge on pooled features of {len(y)} training views\n")
    print("| feature | pooled dims | val SRCC (λ chosen on val) | test SRCC |\n|---|---|---|---|")
    for key in feats:
        v, t = ridge_probe(feats[key], y, val[key], y_val, test[key], y_test)
        print(f"| {key} | {feats[key].shape[1]} | {v:.3f} | {t:.3f} |")


if __name__ == "__main__":
    main()
