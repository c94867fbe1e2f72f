"""Distillation end to end on a toy teacher: cache vs online, KD vs label-only, report, predict."""
import json

import pytest
import torch
from PIL import Image

from kdiqa.cache import CachedViews
from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.data.datamodule import IQADataModule, make_sampler
from kdiqa.distill.module import DistillModule
from kdiqa.registry import TEACHERS
from kdiqa.run import prepare_run
from kdiqa.stages import stage_cache
from kdiqa.students.base import Student, build_student
from kdiqa.teachers.base import Teacher

KD_SETTINGS = [
    "student.options.backbone=kdiqa_cnn_tiny",
    "distill.features=[{target: quality_map, tap: -1, kind: conv, loss: mse, weight: 1.0}]",
    "cache.views_per_image=2",
    "cache.batch_size=16",
    "views.train_scale=[0.6,1.0]",
]


@pytest.fixture
def kd_run(toy_recipe):
    recipe = load_recipe(toy_recipe, KD_SETTINGS + ["trainer.max_epochs=2"])
    run = prepare_run(recipe)
    torch.manual_seed(0)
    TEACHERS.build("toy").save_pretrained(run.teacher)  # an untrained teacher is enough here
    return recipe, run


def test_cached_and_online_targets_give_the_same_loss(kd_run):
    recipe, run = kd_run
    stage_cache(recipe, run)
    dm = IQADataModule(recipe.data, recipe.views)
    dm.setup()
    views = CachedViews(run.cache, dm.splits["train"], make_sampler(recipe.views, train=True))
    batch = torch.utils.data.default_collate([views[i] for i in range(8)])
    assert set(batch["teacher"]) == {"score", "quality_map"}

    teacher = Teacher.from_pretrained(run.teacher)
    student = build_student(recipe.student, recipe.views.size, recipe.distill.features, views.feature_shapes())
    module = DistillModule(student, recipe.distill.fit, recipe.distill, teacher=teacher)
    out = student(batch["image"])
    cached, cached_parts = module.distill_loss(out, batch)
    online, online_parts = module.distill_loss(out, {k: v for k, v in batch.items() if k != "teacher"})
    assert set(cached_parts) == set(online_parts) >= {"label/mse", "kd_score/mse", "kd_feature/quality_map"}
    torch.testing.assert_close(cached, online, rtol=2e-3, atol=2e-4)  # fp16 cache rounding only
    # the teacher is not part of the student's checkpoint
    assert not any(k.startswith("_teacher") for k in module.state_dict())


def test_quickstart_shaped_run_end_to_end(toy_recipe, tmp_path, capsys):
    overrides = KD_SETTINGS + ["trainer.max_epochs=2", "stages=[fit_teacher,cache,distill,baseline,report]"]
    assert main(["run", str(toy_recipe), *overrides]) == 0
    run_dir = tmp_path / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"teacher", "student_kd", "student_label_only"} <= set(metrics)
    for key in ("teacher", "student_kd", "student_label_only"):
        assert -1 <= metrics[key]["test"]["srcc"] <= 1
    report = (run_dir / "report.md").read_text()
    assert "KD student (kdiqa_cnn_tiny)" in report and "label-only student" in report
    assert (run_dir / "plots" / "scatter_test.png").stat().st_size > 1000
    assert (run_dir / "plots" / "summary_test.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "| teacher (toy)" in out

    # the saved student needs neither Lightning nor the teacher
    student = Student.from_pretrained(run_dir / "students" / "kd")
    assert student(torch.rand(3, 3, 24, 24))["score"].shape == (3,)


def test_predict_folder_with_a_corrupt_image(kd_run, tmp_path, capsys, blur_dataset):
    recipe, _ = kd_run
    student = build_student(recipe.student, recipe.views.size, recipe.distill.features, {"quality_map": (4, 12, 12)})
    student.save_pretrained(tmp_path / "student")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.open(blur_dataset / "imgs" / f"{i:03d}.png").save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out_csv = tmp_path / "scores.csv"
    assert main(["predict", str(folder), "--model", str(tmp_path / "student"), "--output", str(out_csv), "--batch-size", "2"]) == 0
    rows = out_csv.read_text().strip().splitlines()
    assert rows[0] == "path,score,error" and len(rows) == 5
    broken = [r for r in rows if "broken.jpg" in r][0]
    assert broken.split(",")[1] == "" and "broken.jpg" in capsys.readouterr().err
    assert sum(1 for r in rows[1:] if r.split(",")[1]) == 3


def test_distill_without_a_cache_says_how_to_make_one(toy_recipe, tmp_path, capsys):
    recipe_args = ["distill", str(toy_recipe), *KD_SETTINGS]
    assert main(recipe_args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdiqa: error: ") and len(err.splitlines()) == 1 and "kdiqa cache" in err


def test_each_stage_seeds_itself_so_the_baseline_ignores_what_ran_before(kd_run):
    """The label-only student is the same whether or not other stages drew randomness first."""
    from kdiqa.stages import stage_baseline, stage_distill

    recipe, run = kd_run
    stage_cache(recipe, run)
    first = stage_baseline(recipe, run)
    stage_distill(recipe, run)
    torch.rand(1000)
    again = stage_baseline(recipe, run)
    assert again["test"]["srcc"] == first["test"]["srcc"] and again["val"]["plcc"] == first["val"]["plcc"]

    # the KD student starts from exactly the weights the label-only one starts from
    from kdiqa.run import seed_stage

    dm = IQADataModule(recipe.data, recipe.views)
    dm.setup()
    shapes = CachedViews(run.cache, dm.splits["train"], make_sampler(recipe.views, train=True)).feature_shapes()
    seed_stage(recipe)
    a = build_student(recipe.student, recipe.views.size, recipe.distill.features, shapes).state_dict()
    torch.rand(10)
    seed_stage(recipe)
    b = build_student(recipe.student, recipe.views.size, recipe.distill.features, shapes).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shuffle", [False, True])
def test_training_loader_keeps_data_shuffle_under_ddp(toy_recipe, shuffle):
    """Lightning would swap in a shuffling DistributedSampler; ours is distributed already, so it stays."""
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler

    recipe = load_recipe(toy_recipe, [f"data.shuffle={str(shuffle).lower()}"])
    dm = IQADataModule(recipe.data, recipe.views)
    assert not isinstance(dm.train_dataloader().sampler, DistributedSampler)  # one process: a plain loader
    orders = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, DistributedSampler) and sampler.shuffle is shuffle
        orders.append(list(sampler))
    assert set(orders[0] + orders[1]) == set(range(len(dm.splits["train"])))  # the ranks cover the set
    interleaved = orders[0][:5] == [0, 2, 4, 6, 8] and orders[1][:5] == [1, 3, 5, 7, 9]
    assert interleaved is not shuffle
