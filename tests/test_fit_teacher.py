"""Fitting a teacher: loss goes down, validation picks the checkpoint, a resumed run continues."""
import json

import pytest
import torch

from kdiqa.config import load_recipe
from kdiqa.run import prepare_run
from kdiqa.stages import stage_eval, stage_fit_teacher
from kdiqa.teachers.base import Teacher


def read_csv_log(run_dir):
    import csv

    rows = list(csv.DictReader(open(run_dir / "logs" / "teacher" / "metrics.csv")))
    return rows


def test_fit_lowers_loss_and_saves_validation_checkpoint(toy_recipe):
    recipe = load_recipe(toy_recipe, ["trainer.max_epochs=6"])
    run = prepare_run(recipe)
    run_dir = run.root
    summary = stage_fit_teacher(recipe, run)

    rows = read_csv_log(run_dir)
    train_losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(train_losses) >= 2 and train_losses[-1] < train_losses[0]

    # the saved checkpoint is the best by val/srcc, never chosen on test
    val = [(float(r["val/srcc"]), int(r["epoch"])) for r in rows if r.get("val/srcc")]
    assert len(val) == 6
    best_srcc = max(srcc for srcc, _ in val)
    first_best_epoch = next(epoch for srcc, epoch in val if srcc == best_srcc)  # ties keep the earlier one
    ckpt = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == first_best_epoch
    assert abs(summary["val"]["srcc"] - best_srcc) < 1e-4

    # the exported teacher reloads without the training module and scores the same
    teacher = Teacher.from_pretrained(run_dir / "teacher")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["teacher"]) >= {"val", "test", "checkpoint"}
    again = stage_eval(recipe, run)
    assert abs(again["test"]["srcc"] - summary["test"]["srcc"]) < 1e-6
    assert teacher(torch.rand(2, 3, 24, 24)).score.shape == (2,)


def test_interrupted_run_resumes_from_its_step(toy_recipe):
    first = load_recipe(toy_recipe, ["trainer.max_epochs=2"])
    run = prepare_run(first)
    stage_fit_teacher(first, run)
    last = torch.load(run.root / "checkpoints" / "teacher" / "latest.ckpt", map_location="cpu", weights_only=True)
    steps_after_first = last["global_step"]

    # same run folder, a longer schedule: training continues from the last checkpoint, not from zero
    longer = load_recipe(toy_recipe, ["trainer.max_epochs=4"])
    stage_fit_teacher(longer, run)
    last = torch.load(run.root / "checkpoints" / "teacher" / "latest.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 4  # written once training is over: 4 epochs completed (kdiqa.checkpoints.LatestCheckpoint)
    assert last["global_step"] == 2 * steps_after_first


def test_a_validation_interval_longer_than_an_epoch_is_a_one_line_config_error(toy_recipe):
    import pytest

    from kdiqa.config.schema import TrainerConfig
    from kdiqa.errors import ConfigError
    from kdiqa.trainer import check_val_interval

    recipe = load_recipe(toy_recipe, ["teacher.fit.trainer={val_check_interval: 10000}"])
    with pytest.raises(ConfigError, match=r"teacher\.fit\.trainer\.val_check_interval: 10000 steps is more than one epoch \(\d+ training batches\)"):
        stage_fit_teacher(recipe, prepare_run(recipe))
    check_val_interval(TrainerConfig(val_check_interval=10), 10, "t")  # exactly one epoch: fine
    check_val_interval(TrainerConfig(val_check_interval=0.5), 3, "t")  # a fraction: always fine
    check_val_interval(TrainerConfig(val_check_interval=50, check_val_every_n_epoch=None), 10, "t")  # step-based
    with pytest.raises(ConfigError, match="at most 4"):
        check_val_interval(TrainerConfig(val_check_interval=5, limit_train_batches=4), 10, "t")


@pytest.mark.slow
def test_the_tiny_dpiqa_teacher_fits_and_reloads_through_fit_teacher(toy_recipe):
    """The same stage, with the real DP-IQA teacher (tiny preset) instead of the toy one."""
    recipe = load_recipe(
        toy_recipe,
        [
            "teacher.name=dpiqa",
            "teacher.options={preset: tiny, latent_stats: auto, image_adapter: {input: rgb+lcn}}",
            "teacher.fit.optim={name: adamw, lr: 0.001}",
            "views.size=32",
            "trainer.max_epochs=4",
        ],
    )
    run = prepare_run(recipe)
    run_dir = run.root
    summary = stage_fit_teacher(recipe, run)
    rows = read_csv_log(run_dir)
    train_losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(train_losses) == 4 and train_losses[-1] < train_losses[0]
    val = [(float(r["val/srcc"]), int(r["epoch"])) for r in rows if r.get("val/srcc")]
    best_epoch = next(epoch for srcc, epoch in val if srcc == max(s for s, _ in val))
    assert torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)["epoch"] == best_epoch

    teacher = Teacher.from_pretrained(run_dir / "teacher")
    assert teacher.config["latent_stats"] is not None  # fitted on the training views, saved with the weights
    again = stage_eval(recipe, run)
    assert abs(again["test"]["srcc"] - summary["test"]["srcc"]) < 1e-6
