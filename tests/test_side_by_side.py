"""Stages side by side (``distill+baseline``): one process each, the same results as one after the other."""
import json
import multiprocessing

import pytest
import torch

from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.errors import ConfigError
from kdiqa.registry import TEACHERS
from kdiqa.run import RunDir, prepare_run
from kdiqa.stages import check_stages, stage_baseline, stage_cache, stage_distill
from kdiqa.stages.side_by_side import run_side_by_side

KD_SETTINGS = [
    "student.options.backbone=kdiqa_cnn_tiny",
    "distill.features=[{target: quality_map, tap: -1, kind: conv, loss: mse, weight: 1.0}]",
    "cache.batch_size=16",
    "trainer.max_epochs=2",
    "threads=1",
]


def test_two_students_side_by_side_match_one_after_the_other(toy_recipe, tmp_path, capsys):
    recipe = load_recipe(toy_recipe, KD_SETTINGS)
    run = prepare_run(recipe)
    torch.manual_seed(0)
    TEACHERS.build("toy").save_pretrained(run.teacher)
    stage_cache(recipe, run)
    serial = {"student_kd": stage_distill(recipe, run), "student_label_only": stage_baseline(recipe, run)}

    other = tmp_path / "side_by_side"
    shared = [f"teacher.checkpoint={run.teacher}", f"cache.path={run.cache}", f"out={other}"]
    assert main(["run", str(toy_recipe), *KD_SETTINGS, *shared, "stages=[distill+baseline]"]) == 0
    out = capsys.readouterr().out
    assert "== stage distill+baseline" in out and "-- distill" in out and "-- baseline" in out
    metrics = json.loads(RunDir(other).metrics.read_text())  # both entries: each process kept the other's
    for key, result in serial.items():
        for split in ("val", "test"):
            assert metrics[key][split]["srcc"] == result[split]["srcc"]
            assert metrics[key][split]["plcc"] == result[split]["plcc"]
    assert (other / "students" / "kd").is_dir() and (other / "students" / "label_only").is_dir()


def _probe(recipe, run) -> dict:
    """A stage that reports how its process is set up."""
    return {"start_method": multiprocessing.get_start_method(), "threads": torch.get_num_threads()}


def test_each_process_starts_its_workers_as_the_command_does_on_the_recipes_threads(toy_recipe):
    """A process started by forkserver would start its DataLoader workers by forkserver too (each one
    importing torch afresh: the label-only student, whose loaders start workers every epoch, ran 2.6x slower)."""
    recipe = load_recipe(toy_recipe, ["threads=1"])
    results = run_side_by_side({"a": _probe, "b": _probe}, recipe, RunDir(recipe.out))
    assert results == [{"start_method": multiprocessing.get_start_method(), "threads": 1}] * 2


def test_a_failing_stage_stops_its_group_with_one_line(toy_recipe, tmp_path, capsys):
    # a cache made for other views: distill refuses it at once with its one-line error, while baseline (which
    # reads only the targets' shapes from the cache; the stage processes have no toy teacher) trains, and is stopped
    recipe = load_recipe(toy_recipe, KD_SETTINGS)
    run = prepare_run(recipe)
    TEACHERS.build("toy").save_pretrained(run.teacher)
    stage_cache(recipe, run)
    capsys.readouterr()
    other_views = [*KD_SETTINGS, "views.train_scale=[0.5,1.0]", "trainer.max_epochs=500", "stages=[distill+baseline]"]
    assert main(["run", str(toy_recipe), *other_views]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdiqa: error: ") and len(err.splitlines()) == 1
    assert "changed since the cache was written" in err
    assert not (tmp_path / "run" / "students" / "label_only").exists()


@pytest.mark.parametrize("entries, message", [
    (["cache+distill"], "'cache' cannot run side by side"),
    (["distill+distill"], "names a stage twice"),
    (["distill+baselin"], "unknown stage 'baselin'; did you mean 'baseline'"),
])
def test_groups_are_checked(entries, message):
    with pytest.raises(ConfigError, match=message):
        check_stages(entries)


@pytest.mark.parametrize("setting", ["trainer.devices=2", "distill.fit.trainer.devices=2"])
def test_a_group_needs_one_device_per_process(toy_recipe, setting):
    recipe = load_recipe(toy_recipe, [setting])
    with pytest.raises(ConfigError, match="needs trainer.devices: 1"):
        check_stages(["distill+baseline"], recipe)
    check_stages(["distill", "baseline"], recipe)  # one after the other: fine
