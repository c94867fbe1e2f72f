"""Distillation under Lightning DDP (2 CPU processes, gloo) matches one process at the same global batch."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ToyTeacher, make_blur_dataset

from kdiqa.config import load_recipe
from kdiqa.run import prepare_run
from kdiqa.stages import stage_cache
from kdiqa.students.base import Student, build_student

SETTINGS = [
    # LayerNorm and the official projector: no BatchNorm, whose statistics are per process on CPU
    # (SyncBatchNorm needs GPUs), so one and two processes compute the same thing
    "student.options.backbone=test_convnext",
    "distill.features=[{target: quality_map, tap: -1, kind: official, loss: mse}]",
    "distill.fit.losses=[{name: mse}]",  # per-sample losses: a global-batch mean is the mean of rank means
    "distill.fit.optim.name=sgd",
    "cache.views_per_image=1",
    "cache.epoch_views=all",
    "data.shuffle=false",
    "trainer.max_epochs=2",
]


def run_distill(recipe, run_dir, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    cmd = [sys.executable, "-m", "kdiqa.cli.main", "distill", str(recipe), "-o", str(run_dir), *SETTINGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    data = make_blur_dataset(tmp_path / "data", n=40, size=32)  # 24 train images: 3 batches of 8, or 2 × 3 of 4
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent(f"""
        name: ddp
        data: {{name: csv, root: {data}, options: {{mos_range: [0, 1]}}}}
        views: {{size: 32}}
        trainer: {{accelerator: cpu, logger: none, progress_bar: false}}
        teacher: {{name: toy}}
    """))
    torch.manual_seed(0)
    teacher = ToyTeacher()
    for run in ("one", "two"):
        # the teacher's targets are cached once, in this process; distillation never needs the teacher
        cfg = load_recipe(recipe, [*SETTINGS, f"out={tmp_path / run}"])
        teacher.save_pretrained(tmp_path / run / "teacher")
        stage_cache(cfg, prepare_run(cfg))

    run_distill(recipe, tmp_path / "one", "data.batch_size=8", "trainer.devices=1")
    run_distill(recipe, tmp_path / "two", "data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp")

    one = Student.from_pretrained(tmp_path / "one" / "students" / "kd")
    two = Student.from_pretrained(tmp_path / "two" / "students" / "kd")
    x = torch.rand(6, 3, 32, 32)
    torch.manual_seed(0)  # the initialisation both runs started from (prepare_run seeds 0 before building)
    r = load_recipe(recipe, [*SETTINGS, f"out={tmp_path / 'one'}"])
    init = build_student(r.student, r.views.size, r.distill.features, {"quality_map": (4, 16, 16)})
    with torch.no_grad():
        a, b = one(x)["score"], two(x)["score"]
    # Equal up to float rounding (measured: parameters within 6e-5 of how far they moved, scores within
    # 2e-8). It needs the same global batches: data.shuffle=false must hold under DDP too, where
    # Lightning would otherwise put in a shuffling DistributedSampler (they then ended ~2e-4 apart).
    moved = max(float((p1 - p0).abs().max()) for p1, p0 in zip(one.state_dict().values(), init.state_dict().values(), strict=True))
    for (name, p1), (_, p2) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        assert float((p1 - p2).abs().max()) <= 1e-3 * moved + 1e-9, f"{name} differs between 1 and 2 processes"
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert float((a - init(x)["score"]).abs().max()) > 1e-4  # training moved the scores: the comparison means something
