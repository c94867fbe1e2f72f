"""How far can a model trained from scratch get on the embedded mini dataset in a CPU budget?

A yardstick for the tiny DP-IQA teacher and the quickstart students, in two parts.

1. Image statistics: a ridge regression on 13 per-image statistics (channel means and standard
   deviations, mean saturation, mean gradient magnitude at full and half resolution, mean absolute
   Laplacian, mean absolute local contrast normalisation, 8×8 blockiness, grey-level entropy), ``λ``
   chosen on val. No training loop: it shows how learnable the labels are. ``--steps 0`` stops here,
   so it is cheap to repeat over ``--data-seed`` 0–4 (each seed is its own photograph split).
2. A plain convolutional network
(the recipe ``kdiqa_cnn_small`` was designed from, :mod:`kdiqa.students.small_cnn` — raw RGB *and*
its local contrast normalisation in, six 3×3 conv layers, mean/max/min pooling, MSE + pairwise ranking
loss, Adam with cosine decay, batch 64, random flips) trained on the mini training split, evaluated on
val and test every ``--eval-every`` steps, with the process CPU time beside each row. The mini test
split holds three photographs, so its SRCC moves by several hundredths between neighbouring
checkpoints; read the trend, not one row.

    .venv/bin/python benchmarks/mini_reference.py --steps 1000 --threads 1
    for s in 0 1 2 3 4; do .venv/bin/python benchmarks/mini_reference.py --steps 0 --data-seed $s; done
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from feature_probe import ridge_probe  # a sibling script: benchmarks/ is on sys.path when run as one
from PIL import Image
from torch import nn

from kdiqa.measure import count_parameters
from kdiqa.metrics import srcc
from kdiqa.registry import DATASETS
from kdiqa.teachers.dpiqa.adapters import local_contrast_normalise


def load_splits(root: str, n_train: int, data_seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every split's images as one uint8 tensor with its MOS (the mini set is 64 px: 3000 views are 37 MB)."""
    samples = DATASETS.get("mini")(root, n_train=n_train, seed=data_seed).samples
    data = {}
    for split in ("train", "val", "test"):
        part = [s for s in samples if s.split == split]
        images = np.stack([np.asarray(Image.open(s.path).convert("RGB")) for s in part])
        data[split] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor([s.mos for s in part])
    return data


def image_statistics(images: torch.Tensor) -> np.ndarray:
    """13 statistics per image (uint8 NCHW in, float64 N×13 out); see the module docstring."""
    x = images.double() / 255
    grey = x.mean(1, keepdim=True)
    half = F.avg_pool2d(grey, 2)

    def gradient(g: torch.Tensor) -> torch.Tensor:
        dx, dy = g[..., :-1, 1:] - g[..., :-1, :-1], g[..., 1:, :-1] - g[..., :-1, :-1]
        return (dx * dx + dy * dy).sqrt().mean((1, 2, 3))

    lap = 4 * grey[..., 1:-1, 1:-1] - grey[..., :-2, 1:-1] - grey[..., 2:, 1:-1] - grey[..., 1:-1, :-2] - grey[..., 1:-1, 2:]
    dx = (grey[..., 1:] - grey[..., :-1]).abs()
    blockiness = dx[..., 7::8].mean((1, 2, 3)) / (dx.mean((1, 2, 3)) + 1e-6)
    hist = torch.stack([torch.histc(g, 32, 0, 1) for g in grey.flatten(1)]) / grey[0].numel()
    entropy = -(hist * (hist + 1e-12).log()).sum(1)
    columns = [*x.mean((2, 3)).T, *x.std((2, 3)).T, (x.amax(1) - x.amin(1)).mean((1, 2)), gradient(grey), gradient(half),
               lap.abs().mean((1, 2, 3)), local_contrast_normalise(x.float()).abs().double().mean((1, 2, 3)), blockiness, entropy]
    return torch.stack(columns, 1).numpy()


def statistics_baseline(data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Ridge on the image statistics (λ picked on val); returns (val SRCC, test SRCC)."""
    (train, y), (val, y_val), (test, y_test) = ((image_statistics(data[k][0]), data[k][1].numpy()) for k in ("train", "val", "test"))
    return ridge_probe(train, y, val, y_val, test, y_test)


class ReferenceCNN(nn.Module):
    """Six conv layers (stride 2 every second one) on RGB ⊕ LCN, pooled by mean, max and min."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [6, width, width, 2 * width, 2 * width, 4 * width, 4 * width]
        for i in range(6):
            layers += [nn.Conv2d(channels[i], channels[i + 1], 3, stride=1 + i % 2, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(3 * channels[-1], 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.body(torch.cat([images * 2 - 1, local_contrast_normalise(images)], dim=1))
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3)), f.amin((2, 3))], dim=1)).squeeze(1)


def pairwise_ranking(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    sign = torch.sign(target[:, None] - target[None, :])
    mask = sign != 0
    return F.relu(-sign[mask] * (pred[:, None] - pred[None, :])[mask]).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="mini dataset folder (default data/mini, or data/mini-seed<N> for --data-seed N > 0)")
    parser.add_argument("--data-seed", type=int, default=0, help="the mini dataset's seed (its photograph split)")
    parser.add_argument("--n-train", type=int, default=3000, help="as data.options.n_train of the tiny recipes")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = args.root or ("data/mini" if args.data_seed == 0 else f"data/mini-seed{args.data_seed}")
    data = load_splits(root, args.n_train, args.data_seed)
    val, test = statistics_baseline(data)
    print(f"mini dataset {root} (seed {args.data_seed}, {len(data['train'][1])} training views)")
    print(f"image statistics + ridge: val SRCC {val:.3f}, test SRCC {test:.3f}")
    if args.steps <= 0:
        return
    model = ReferenceCNN(args.width)
    optimiser = torch.optim.Adam(model.parameters(), args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    generator = torch.Generator().manual_seed(args.seed)
    print(f"reference CNN: {count_parameters(model):,} parameters, {args.threads} thread(s)")
    print("| step | val SRCC | test SRCC | train CPU s |\n|---|---|---|---|")

    @torch.no_grad()
    def evaluate(split: str) -> float:
        model.eval()
        images, mos = data[split]
        pred = torch.cat([model(images[i : i + 300].float() / 255) for i in range(0, len(images), 300)])
        model.train()
        return srcc(pred.numpy(), mos.numpy())

    images, mos = data["train"]
    train_cpu = 0.0
    for step in range(1, args.steps + 1):
        started = time.process_time()
        idx = torch.randint(len(images), (args.batch_size,), generator=generator)
        x, y = images[idx].float() / 255, mos[idx]
        flip = torch.rand(len(x), generator=generator) < 0.5
        x[flip] = x[flip].flip(-1)
        pred = model(x)
        loss = F.mse_loss(pred, y) + 0.5 * pairwise_ranking(pred, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        train_cpu += time.process_time() - started
        if step % args.eval_every == 0 or step == args.steps:
            print(f"| {step} | {evaluate('val'):.3f} | {evaluate('test'):.3f} | {train_cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
