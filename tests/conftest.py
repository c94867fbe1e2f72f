"""Shared fixtures: tiny datasets written in the generic CSV format, tiny teachers."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from kdiqa.registry import TEACHERS
from kdiqa.teachers.base import Teacher, TeacherOutput

# tiny models: one thread avoids the two cores waiting on each other (measured 2-100x faster here)
torch.set_num_threads(1)


def make_blur_dataset(root: Path, n: int = 48, size: int = 24, seed: int = 0) -> Path:
    """Images whose quality is their sharpness: a label a tiny model can learn in a few steps."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    lines = ["path,mos,split"]
    for i in range(n):
        base = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        level = float(rng.uniform(0, 3))
        base.filter(ImageFilter.GaussianBlur(level)).save(root / "imgs" / f"{i:03d}.png")
        split = "train" if i < n * 0.6 else ("val" if i < n * 0.8 else "test")
        lines.append(f"imgs/{i:03d}.png,{1 - level / 3:.4f},{split}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@TEACHERS.register("toy")
class ToyTeacher(Teacher):
    """A few convolutions; stands in for any teacher the framework must handle."""

    name = "toy"

    def __init__(self, width: int = 8):
        super().__init__(width=width)
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 4, 3, stride=2, padding=1))
        self.head = nn.Linear(4, 1)

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        fmap = self.body(images)
        high = images - nn.functional.avg_pool2d(images, 3, 1, 1)
        score = self.head(fmap.mean((2, 3))).squeeze(1) + high.abs().mean((1, 2, 3))
        return TeacherOutput(score=score, features={"quality_map": fmap})


@pytest.fixture
def blur_dataset(tmp_path) -> Path:
    return make_blur_dataset(tmp_path / "blur")


@pytest.fixture
def toy_recipe(tmp_path, blur_dataset) -> Path:
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: toy
        out: {tmp_path / "run"}
        seed: 0
        data: {{name: csv, root: {blur_dataset}, options: {{mos_range: [0, 1]}}, batch_size: 8, eval_batch_size: 16}}
        views: {{size: 24}}
        trainer: {{max_epochs: 3, logger: csv, progress_bar: false, accelerator: cpu, devices: 1}}
        teacher:
          name: toy
          fit:
            optim: {{name: adam, lr: 0.01}}
            losses: [{{name: mse}}, {{name: margin_ranking, weight: 0.5}}]
    """))
    return recipe


def _one_torch_thread():
    """Tiny models on shared cores: a second OpenMP thread only waits for the first (tiny grouped
    convolutions stall with 2 threads: 15 s instead of 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


one_thread = pytest.fixture(_one_torch_thread, name="one_thread")  # for one test
one_thread_module = pytest.fixture(_one_torch_thread, scope="module", name="one_thread_module")  # for a whole module
