"""The quickstart's shipped teacher: the labelled stream it was fitted on, the tool that fits it, the
explicit photograph splits (folds) and the packaged folder the quickstart loads like released weights."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from kdiqa.config import load_recipe
from kdiqa.config.loader import PACKAGE_ROOT
from kdiqa.data.mini import load_photographs, make_mini, split_photographs
from kdiqa.data.mini.dead_leaves import MAX_RADIUS, MIN_RADIUS, dead_leaves_reference, leaf_radii
from kdiqa.data.mini.stream import LabelledCropStream, augmented_reference, augmented_sample
from kdiqa.errors import DataError
from kdiqa.run import RunDir
from kdiqa.teachers.base import Teacher

SHIPPED = "teachers/dpiqa/weights/tiny-quality"



def _photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((160, 120), Image.Resampling.BICUBIC)


def test_the_stream_is_reproducible_labelled_and_endless(one_thread):
    names = split_photographs(list(load_photographs()), 0)["train"][:2]
    first = [x for _, x in zip(range(40), LabelledCropStream(names, size=32, seed=5), strict=False)]
    again = [x for _, x in zip(range(40), LabelledCropStream(names, size=32, seed=5), strict=False)]
    other = next(iter(LabelledCropStream(names, size=32, seed=6)))
    assert len(first) == 40  # more than one label batch: the stream goes on
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and float(a["mos"]) == float(b["mos"])
    assert not torch.equal(first[0]["image"], other["image"])
    labels = np.array([float(x["mos"]) for x in first])
    assert first[0]["image"].shape == (3, 32, 32) and 0 <= first[0]["image"].min() and first[0]["image"].max() <= 1
    assert ((labels >= 0) & (labels <= 1)).all() and labels.std() > 0.05
    with pytest.raises(DataError, match="no training photographs"):
        LabelledCropStream([], size=32)


def test_augmented_references_vary_the_content_and_clean_samples_score_one():
    photo = _photo()
    crops = [augmented_reference(photo, 32, np.random.default_rng([0, i])) for i in range(20)]
    assert all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c in crops)
    greys = sum(bool((c[..., 0] == c[..., 1]).all() and (c[..., 1] == c[..., 2]).all()) for c in crops)
    assert 0 < greys < 20  # some references are made grey, most keep their colour
    means = [c.mean() for c in crops]
    assert max(means) - min(means) > 10  # exposure and position change the look
    samples = [augmented_sample({"p": photo}, ["p"], 32, np.random.default_rng([1, i])) for i in range(60)]
    assert {name for _, _, name in samples} == {"p"}
    assert any(r is d for r, d, _ in samples) and any(r is not d for r, d, _ in samples)  # some clean, most distorted


def test_dead_leaf_radii_follow_the_power_law():
    radii = leaf_radii(20000, 32, np.random.default_rng(0))
    lo, hi = 2 * MIN_RADIUS, 2 * MAX_RADIUS * 32
    assert (radii >= lo).all() and (radii <= hi).all() and (np.diff(radii) <= 0).all()  # largest first
    # density ∝ r⁻³ on [lo, hi]: P(r ≤ x) = (lo⁻² − x⁻²) / (lo⁻² − hi⁻²); its median and 90th percentile
    for q in (0.5, 0.9):
        expected = (lo**-2 - q * (lo**-2 - hi**-2)) ** -0.5
        assert abs(np.quantile(radii, q) / expected - 1) < 0.03


def test_dead_leaves_references_are_new_content_from_the_photographs_own_pieces():
    photo = _photo()
    refs = [dead_leaves_reference({"p": photo}, ["p"], 32, np.random.default_rng([2, i])) for i in range(4)]
    assert all(r.shape == (32, 32, 3) and r.dtype == np.uint8 for r in refs)
    assert np.array_equal(refs[0], dead_leaves_reference({"p": photo}, ["p"], 32, np.random.default_rng([2, 0])))
    assert not np.array_equal(refs[0], refs[1])
    # cut from the photographs: a grey photograph gives grey leaves only (exposure varies, hue never appears)
    grey = Image.fromarray(np.repeat(np.asarray(photo.convert("L"))[..., None], 3, axis=2))
    leaves = dead_leaves_reference({"g": grey}, ["g"], 32, np.random.default_rng(3))
    assert (leaves[..., 0] == leaves[..., 1]).all() and (leaves[..., 1] == leaves[..., 2]).all() and leaves.std() > 5
    ref, dist, name = augmented_sample({"p": photo}, ["p"], 32, np.random.default_rng(4), dead_leaves=1.0)
    assert name == "dead_leaves" and ref.shape == dist.shape == (32, 32, 3)


def test_the_stream_mixes_in_its_share_of_dead_leaves(one_thread):
    names = split_photographs(list(load_photographs()), 0)["train"][:2]
    plain = [x for _, x in zip(range(32), LabelledCropStream(names, size=32, seed=5), strict=False)]
    leaves = [x for _, x in zip(range(32), LabelledCropStream(names, size=32, seed=5, dead_leaves=1.0), strict=False)]
    again = [x for _, x in zip(range(32), LabelledCropStream(names, size=32, seed=5, dead_leaves=1.0), strict=False)]
    assert all(torch.equal(a["image"], b["image"]) and float(a["mos"]) == float(b["mos"]) for a, b in zip(leaves, again, strict=True))
    assert not any(torch.equal(a["image"], b["image"]) for a, b in zip(plain, leaves, strict=True))
    labels = np.array([float(x["mos"]) for x in leaves])
    assert ((labels >= 0) & (labels <= 1)).all() and labels.std() > 0.05
    for bad in (-0.1, 1.5):
        with pytest.raises(DataError, match="dead_leaves is a share"):
            LabelledCropStream(names, size=32, dead_leaves=bad)


def test_held_out_photographs_replace_the_seeded_split(tmp_path):
    held = {"val": ["grass"], "test": ["moon", "rocket"]}
    labels = make_mini(tmp_path / "fold", size=32, n_train=6, n_val=4, n_test=4, seed=0, held_out=held, progress=False)
    meta = json.loads((tmp_path / "fold" / "meta.json").read_text())
    assert meta["photographs"]["val"] == ["grass"] and meta["photographs"]["test"] == ["moon", "rocket"]
    assert not {"grass", "moon", "rocket"} & set(meta["photographs"]["train"])
    with open(labels, newline="") as f:
        groups = {(r["split"], r["group"]) for r in csv.DictReader(f)}
    assert {g for s, g in groups if s == "test"} <= {"moon", "rocket"} and {g for s, g in groups if s == "val"} == {"grass"}
    for bad, message in (({"val": ["grass"]}, "exactly the keys"), ({"val": ["nope"], "test": ["moon"]}, "unknown photographs"),
                         ({"val": ["moon"], "test": ["moon"]}, "share no photograph")):
        with pytest.raises(DataError, match=message):
            make_mini(tmp_path / "bad", size=32, n_train=2, n_val=2, n_test=2, held_out=bad, progress=False)


@pytest.mark.slow
def test_the_fitting_tool_writes_a_teacher_folder_with_its_provenance(tmp_path, one_thread):
    from kdiqa.teachers.dpiqa.quality import main

    out = tmp_path / "fitted"
    main(["--out", str(out), "--steps", "3", "--batch-size", "8", "--eval-every", "2",
          f"data.root={tmp_path / 'mini'}", "data.options.n_train=8", "data.options.n_val=24", "data.options.n_test=24"])
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "provenance.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fitted", "mini"]  # nothing half-written beside it
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["steps"] == 3 and [c["step"] for c in provenance["curve"]] == [2, 3]
    assert provenance["best_step"] in (2, 3) and set(provenance["test"]) >= {"srcc", "plcc", "pred_std_over_label_std"}
    assert "teachers.dpiqa.quality" in provenance["command"] and provenance["data"]["photographs"]["test"]
    teacher = Teacher.from_pretrained(out)
    assert teacher.config["latent_stats"] is not None  # fitted on stream views and saved with the weights
    assert teacher(torch.rand(2, 3, 64, 64)).score.shape == (2,)


def test_the_quickstart_loads_the_shipped_teacher_from_any_directory(tmp_path, monkeypatch):
    recipe = load_recipe("quickstart")
    assert recipe.teacher.checkpoint == SHIPPED and "fit_teacher" not in recipe.stages
    assert recipe.data.unlabelled.mini >= 5 * recipe.data.options["n_train"] and recipe.data.options["n_train"] <= 1000
    monkeypatch.chdir(tmp_path)
    path = RunDir(tmp_path, recipe.teacher.checkpoint).teacher
    assert path == PACKAGE_ROOT / SHIPPED
    provenance = json.loads((path / "provenance.json").read_text())
    assert provenance["data"]["photographs"] == split_photographs(list(load_photographs()), 0)  # the quickstart's split
    assert provenance["test"]["srcc"] > 0.3 and provenance["test"]["pred_std_over_label_std"] > 0.3
    teacher = Teacher.from_pretrained(path)
    assert teacher(torch.rand(2, 3, 64, 64)).score.shape == (2,)


def test_a_packaged_prior_is_recorded_by_the_path_the_recipe_gives(tmp_path, monkeypatch):
    from kdiqa.registry import TEACHERS

    monkeypatch.chdir(tmp_path)  # found inside the package, yet recorded machine-independently
    recipe = load_recipe("dpiqa/tiny")
    teacher = TEACHERS.build(recipe.teacher.name, **recipe.teacher.options)
    assert teacher.config["initialised_from"]["sd_checkpoint"] == "teachers/dpiqa/weights/tiny-mini"
    shipped = json.loads((PACKAGE_ROOT / SHIPPED / "config.json").read_text())
    assert shipped["config"]["initialised_from"]["sd_checkpoint"] == "teachers/dpiqa/weights/tiny-mini"
