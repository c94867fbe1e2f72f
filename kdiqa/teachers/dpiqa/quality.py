"""Fit the tiny DP-IQA teacher to quality offline and write it as a shipped kdiqa teacher folder.

Why: the quickstart must start where a real user starts — from a teacher that already knows quality,
loaded like released weights — and a teacher fitted inside the quickstart's few minutes does not
(test SRCC 0.28, predictions squeezed into 0.672–0.686). This tool takes the time it needs, once:

- architecture and starting weights: the recipe's teacher (``dpiqa/tiny``: the tiny SD family from its
  diffusion prior ``tiny-mini``, image adapter on RGB + local contrast normalisation);
- data: :class:`kdiqa.data.mini.stream.LabelledCropStream` — fresh, content-augmented, labelled crops
  of the recipe's *training* photographs, never the same sample twice, so nothing can be memorised,
  half of them (``--dead-leaves``) dead-leaves images cut from those photographs: new content;
- losses and optimiser: the recipe's ``teacher.fit`` (MSE + margin ranking, AdamW), cosine decay over
  ``--steps`` after a short warm-up;
- model choice: validation SRCC on the dataset's validation split every ``--eval-every`` steps; the
  best weights are kept and the test split is scored once, at the end.

The folder (``model.safetensors`` + ``config.json``, what ``save_pretrained`` writes) is written beside
``--out`` and moved into place, with ``provenance.json``: the command, recipe, seed, photographs,
time, the validation curve and the final metrics. The shipped teacher was made with:

    .venv/bin/python -m kdiqa.teachers.dpiqa.quality --out kdiqa/teachers/dpiqa/weights/tiny-quality
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdiqa.config import load_recipe
from kdiqa.data.datamodule import IQADataModule
from kdiqa.data.mini import LabelledCropStream
from kdiqa.data.mini.dead_leaves import SHARE as DEAD_LEAVES_SHARE
from kdiqa.fit import build_optimizer
from kdiqa.io import atomic_folder
from kdiqa.losses import WeightedLoss
from kdiqa.metrics import iqa_metrics
from kdiqa.registry import TEACHERS
from kdiqa.teachers.base import Teacher

WARMUP_STEPS = 50


@torch.no_grad()
def score_split(teacher: torch.nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    teacher.eval()
    preds, labels = [], []
    for batch in loader:
        preds.append(teacher(batch["image"]).score.float())
        labels.append(batch["mos"].float())
    teacher.train()
    return torch.cat(preds).numpy(), torch.cat(labels).numpy()


def split_metrics(teacher: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    pred, mos = score_split(teacher, loader)
    metrics = {k: float(v) for k, v in iqa_metrics(pred, mos).items() if isinstance(v, (int, float))}
    metrics["pred_std_over_label_std"] = float(pred.std() / max(mos.std(), 1e-12))
    return metrics


def fit_quality(
    recipe_name: str, overrides: list[str], *, steps: int, batch_size: int, eval_every: int, seed: int,
    dead_leaves: float = 0.0, progress: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the recipe's teacher, fit it on the labelled stream, return (best teacher, log)."""
    recipe = load_recipe(recipe_name, overrides)
    torch.manual_seed(seed)
    dm = IQADataModule(recipe.data, recipe.views)
    dm.setup()
    meta = json.loads((Path(recipe.data.root) / "meta.json").read_text())
    photographs = meta["photographs"]["train"]
    size = recipe.views.size

    def eval_loader(split: str) -> DataLoader:
        return DataLoader(dm.split_dataset(split, train_views=False), batch_size=200, num_workers=0)

    val_loader, test_loader = eval_loader("val"), eval_loader("test")
    stream = DataLoader(LabelledCropStream(photographs, size=size, seed=seed, dead_leaves=dead_leaves), batch_size=batch_size, num_workers=1)
    batches = iter(stream)

    teacher = TEACHERS.build(recipe.teacher.name, **recipe.teacher.options)
    teacher.prepare([next(batches) for _ in range(max(1, math.ceil(512 / batch_size)))])
    params = [p for p in teacher.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, recipe.teacher.fit.optim)

    def lr_factor(step: int) -> float:
        if step < WARMUP_STEPS:
            return (step + 1) / WARMUP_STEPS
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    loss_fn = WeightedLoss([(t.name, t.weight, dict(t.options)) for t in recipe.teacher.fit.losses if t.output == "score"])
    curve: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (-math.inf, 0, None)
    teacher.train()
    bar = tqdm(total=steps, desc="fit tiny teacher", disable=not progress, dynamic_ncols=True)
    for step in range(1, steps + 1):
        batch = next(batches)
        loss, _ = loss_fn(teacher(batch["image"]).score, batch["mos"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.update(1)
        if step % eval_every == 0 or step == steps:
            val = split_metrics(teacher, val_loader)
            curve.append({"step": step, "loss": loss.item(), "val_srcc": val["srcc"], "val_plcc": val["plcc"]})
            bar.set_postfix(val_srcc=f"{val['srcc']:.3f}")
            if val["srcc"] > best[0]:
                best = (val["srcc"], step, copy.deepcopy(teacher.state_dict()))
    bar.close()
    teacher.load_state_dict(best[2])
    teacher.eval()
    log = {
        "recipe": recipe_name,
        "overrides": overrides,
        "seed": seed,
        "data": {"name": recipe.data.name, "options": dict(recipe.data.options), "photographs": meta["photographs"],
                 "training": "LabelledCropStream (kdiqa/data/mini/stream.py): fresh content-augmented crops of the training photographs",
                 "dead_leaves": dead_leaves},
        "steps": steps,
        "batch_size": batch_size,
        "samples_seen": steps * batch_size,
        "best_step": best[1],
        "curve": curve,
        "val": split_metrics(teacher, val_loader),
        "test": split_metrics(teacher, test_loader),
    }
    return teacher, log


def save_shipped(teacher: Teacher, out: str | Path, provenance: dict[str, Any]) -> Path:
    """``save_pretrained`` plus provenance.json, written atomically, replacing ``out``."""
    with atomic_folder(out, force=True) as tmp:
        teacher.save_pretrained(tmp)
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the teacher folder to write")
    parser.add_argument("--recipe", default="dpiqa/tiny", help="teacher architecture, starting weights, losses and data")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dead-leaves", type=float, default=DEAD_LEAVES_SHARE,
                        help="share of the stream's references that are dead-leaves images (kdiqa/data/mini/dead_leaves.py)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. teacher.fit.optim.lr=2e-3")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    teacher, log = fit_quality(args.recipe, args.overrides, steps=args.steps, batch_size=args.batch_size,
                               eval_every=args.eval_every, seed=args.seed, dead_leaves=args.dead_leaves)
    seconds = time.perf_counter() - started
    provenance = {
        "what": "tiny DP-IQA teacher fitted to the mini dataset's pseudo-MOS, from its diffusion prior",
        "command": "python -m kdiqa.teachers.dpiqa.quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": round(seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        **log,
    }
    path = save_shipped(teacher, args.out, provenance)
    test = log["test"]
    print(f"wrote {path} in {seconds / 60:.1f} min: best step {log['best_step']}, val SRCC {log['val']['srcc']:.4f}, "
          f"test SRCC {test['srcc']:.4f} / PLCC {test['plcc']:.4f}, prediction std / label std {test['pred_std_over_label_std']:.2f}")


if __name__ == "__main__":
    main()
