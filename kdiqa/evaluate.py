"""Score a model over a split and report the field's metrics, outside any training loop."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdiqa.data.datamodule import IQADataModule
from kdiqa.io import write_json
from kdiqa.measure import default_device, predicted_score
from kdiqa.metrics import iqa_metrics
from kdiqa.run import RunDir


@torch.no_grad()
def predict_split(model: nn.Module, loader: DataLoader, device: torch.device | None = None, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Predicted scores and MOS for every sample of a loader, in loader order."""
    device = device or default_device()
    was_training = model.training
    model.eval().to(device)
    preds, targets = [], []
    try:
        for batch in tqdm(loader, desc=desc or "predict", leave=False, disable=None):
            preds.append(predicted_score(model(batch["image"].to(device))).float().cpu())
            targets.append(batch["mos"].float())
    finally:
        model.train(was_training)
    return torch.cat(preds).numpy(), torch.cat(targets).numpy()


def evaluate_splits(model: nn.Module, dm: IQADataModule, splits: tuple[str, ...] = ("val", "test")) -> dict[str, Any]:
    """IQA metrics per split; predictions are kept for plots and reports."""
    dm.setup()
    results: dict[str, Any] = {}
    for split in splits:
        if not dm.splits.get(split):
            continue
        loader = DataLoader(dm.split_dataset(split), batch_size=dm.data_cfg.eval_batch_size, num_workers=dm.data_cfg.num_workers)
        pred, target = predict_split(model, loader, desc=f"eval {split}")
        results[split] = {"metrics": iqa_metrics(pred, target), "pred": pred.tolist(), "mos": target.tolist()}
    return results


def record_evaluation(model: nn.Module, dm: IQADataModule, run: RunDir, key: str, checkpoint: str) -> dict[str, Any]:
    """Evaluate a fitted model on val and test once; store its metrics (``metrics.json[key]``) and
    predictions (``predictions/<key>.json``) in the run folder. Returns the summary."""
    results = evaluate_splits(model, dm)
    summary: dict[str, Any] = {split: r["metrics"] for split, r in results.items()}
    summary["checkpoint"] = checkpoint
    run.update_metrics(key, summary)
    write_json(run.predictions(key), {s: {"pred": r["pred"], "mos": r["mos"]} for s, r in results.items()})
    return summary
