"""The unlabelled pool (data.unlabelled): sources, fingerprints, caching, masked losses, mixing, stages."""
from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from test_cache import FakeTeacher, build, make_sampler, make_samples
from torch import nn

import kdiqa.cache.partial as partial_file
import kdiqa.stages.distill as student_stages
from kdiqa.cache import CachedViews, cache_info, dataset_fingerprint, format_cache_info
from kdiqa.cli.main import main
from kdiqa.config import load_recipe
from kdiqa.config.schema import DataConfig, DistillConfig, FitConfig, LossTerm, UnlabelledConfig, ViewConfig
from kdiqa.data.datamodule import IQADataModule
from kdiqa.data.mix import MixedSampler, pool_share
from kdiqa.data.unlabelled import is_labelled, load_pool, unlabelled_sample
from kdiqa.distill.module import DistillModule
from kdiqa.errors import ConfigError, DataError
from kdiqa.registry import TEACHERS
from kdiqa.run import prepare_run
from kdiqa.stages import stage_cache

KD_SETTINGS = [
    "student.options.backbone=kdiqa_cnn_tiny",
    "distill.features=[{target: quality_map, tap: -1, kind: conv, loss: mse, weight: 1.0}]",
    "cache.views_per_image=2",
    "cache.batch_size=16",
    "views.train_scale=[0.6,1.0]",
    "trainer.max_epochs=1",
]


def write_images(folder: Path, n: int, size: int = 24, seed: int = 1, corrupt: tuple[int, ...] = ()) -> list[Path]:
    """``n`` small random PNGs; those numbered in ``corrupt`` are not images at all."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"p{i:03d}.png"
        if i in corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
        else:
            Image.fromarray(rng.integers(0, 256, (size, size + i % 5, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def same_arrays(a: Path, b: Path) -> None:
    """Every dataset equal bit for bit, NaN where the other has NaN."""
    def read(path: Path) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: out.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
        return out

    left, right = read(a), read(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert np.array_equal(left[name], right[name], equal_nan=left[name].dtype.kind == "f"), name


# ----------------------------------------------------------------------------- recipe and sources
def test_pool_keys_are_checked_when_the_recipe_loads(toy_recipe):
    cases = [
        (["data.unlabelled.folder=a", "data.unlabelled.csv=b.csv"], "data.unlabelled: give one pool source, not folder and csv"),
        (["data.unlabelled.mini=50"], "data.unlabelled.mini: extra crops exist only for data.name: mini"),
        (["data.unlabelled.root=x"], "data.unlabelled.root: only used with data.unlabelled.csv"),
        (["data.unlabelled.mini=-1", "data.name=mini"], "data.unlabelled.mini: must be >= 0"),
        (["distill.unlabelled_fraction=1.5"], r"distill.unlabelled_fraction: must be in \[0, 1\]"),
        (["data.unlabelled.folders=a"], "unknown key 'data.unlabelled.folders'; did you mean 'data.unlabelled.folder'"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_recipe(toy_recipe, overrides)
    recipe = load_recipe(toy_recipe)
    assert not recipe.data.unlabelled.enabled and recipe.distill.unlabelled_fraction is None


def test_pool_from_a_folder_or_a_csv_leaves_out_labelled_missing_and_repeated_images(toy_recipe, blur_dataset, tmp_path, capsys):
    folder = tmp_path / "pool"
    write_images(folder / "a", 3)
    write_images(folder / "b" / "deep", 2, seed=2)
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(blur_dataset / "imgs" / "000.png", folder / "copy.PNG")  # a copy is another file: kept
    dm = IQADataModule(*_sections(toy_recipe, [f"data.unlabelled.folder={folder}"]))
    pool = dm.pool()
    assert pool is not None and len(pool.samples) == 6 and not pool.left_out
    assert [Path(s.path).relative_to(folder).as_posix() for s in pool.samples] == [
        "a/p000.png", "a/p001.png", "a/p002.png", "b/deep/p000.png", "b/deep/p001.png", "copy.PNG"]
    assert all(not is_labelled(s) and s.split == "train" and math.isnan(s.mos_raw) for s in pool.samples)
    train = dm.splits["train"]
    assert dm.distill_samples() == train + pool.samples
    assert all(is_labelled(s) for split in ("train", "val", "test") for s in dm.splits[split])  # the pool stays out
    assert len(dm.train_dataloader().dataset) == len(train)  # what the label-only baseline trains on

    listing = tmp_path / "pool.csv"
    test_image = [s for s in dm.splits["test"]][0].path
    listing.write_text(f"path,note\na/p000.png,x\nb/deep/p001.png,y\nmissing.png,z\n,empty\na/p000.png,again\n{test_image},leak\n")
    with pytest.warns(UserWarning, match=r"left out 4 pool entries \(2 kept\); the first: .*row 4: image 'missing.png' not found"):
        pool = load_pool(_sections(toy_recipe, [f"data.unlabelled.csv={listing}", f"data.unlabelled.root={folder}"])[0], dm.dataset.samples)
    assert [Path(s.path).name for s in pool.samples] == ["p000.png", "p001.png"]
    assert any("also an image of the labelled dataset" in why for why in pool.left_out)  # no test image leaks in

    assert main(["data", "info", str(toy_recipe), f"data.unlabelled.folder={folder}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unlabelled"] == {"count": 6, "source": f"folder {folder}", "left_out": 0}
    assert summary["train"]["count"] == len(train)
    assert main(["data", "info", str(toy_recipe), f"data.unlabelled.folder={folder}"]) == 0
    out = capsys.readouterr().out
    assert "labelled" in out and f"unlabelled pool: 6 images for distillation (folder {folder}), 0 left out" in out

    with pytest.raises(DataError, match="data.unlabelled.folder: folder not found"):
        IQADataModule(*_sections(toy_recipe, [f"data.unlabelled.folder={tmp_path / 'nowhere'}"])).pool()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="data.unlabelled: no usable images in folder"):
        IQADataModule(*_sections(toy_recipe, [f"data.unlabelled.folder={tmp_path / 'empty'}"])).pool()


def _sections(recipe_path: Path, overrides: list[str]) -> tuple[Any, Any]:
    recipe = load_recipe(recipe_path, overrides)
    return recipe.data, recipe.views


# ----------------------------------------------------------------------------- fingerprint
def test_the_dataset_fingerprint_covers_the_pool_files(tmp_path):
    labelled = make_samples(tmp_path / "images", 4)
    paths = write_images(tmp_path / "pool", 3)
    pool = [unlabelled_sample(p) for p in paths]
    before = dataset_fingerprint(labelled + pool)
    assert dataset_fingerprint(labelled) != before
    assert dataset_fingerprint(labelled + pool[:2]) != before  # a pool file removed
    extra = write_images(tmp_path / "more", 1, seed=9)
    assert dataset_fingerprint(labelled + pool + [unlabelled_sample(extra[0])]) != before  # added
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "images", moved / "images")
    shutil.copytree(tmp_path / "pool", moved / "pool")
    assert dataset_fingerprint(make_samples(moved / "images", 4) + [unlabelled_sample(moved / "pool" / p.name) for p in paths]) == before
    write_images(tmp_path / "pool", 3, seed=5)  # the same names, other pixels
    assert dataset_fingerprint(labelled + pool) != before


# ----------------------------------------------------------------------------- cache
def pool_samples(tmp_path: Path, corrupt: tuple[int, ...] = (1,)) -> list:
    """6 labelled images (4 train, 2 val) then 5 pool images, one of which does not decode."""
    labelled = [s for s in make_samples(tmp_path / "images", 6)]
    return labelled + [unlabelled_sample(p) for p in write_images(tmp_path / "pool", 5, corrupt=corrupt)]


def test_cache_stores_pool_views_without_labels_and_skips_a_corrupt_image(tmp_path):
    samples = pool_samples(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = build(tmp_path / "c.h5", samples)
    said = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(said) == 1 and "skipped 1 unreadable unlabelled image " in said[0] and "p001.png" in said[0]
    assert summary["unreadable"] == 1 and summary["views"] == 33
    with h5py.File(tmp_path / "c.h5", "r") as f:
        mos, score, index = f["mos"][...], f["teacher/score"][...], f["index"][...]
        fmap = f["features/quality_map"][...]
    assert np.isfinite(mos[:18]).all() and np.isnan(mos[18:]).all()  # stored per view: no label for the pool
    skipped = index == 7  # the corrupt pool image (image 7) holds no targets; every other view does
    assert np.isnan(score[skipped]).all() and np.isnan(fmap[skipped]).all() and np.isfinite(score[~skipped]).all()

    data = CachedViews(tmp_path / "c.h5", samples, make_sampler())
    assert len(data) == 30 and data.unreadable_images == 1
    assert data.labelled_items().tolist() == [True] * 18 + [False] * 12
    item = data[20]
    assert item["index"] == 6 and math.isnan(item["mos"].item()) and torch.isfinite(item["teacher"]["score"])
    teacher = FakeTeacher().eval()
    with torch.no_grad():
        online = teacher(item["image"][None])
    assert torch.allclose(item["teacher"]["score"], online.score[0], atol=1e-5)  # pool views replay exactly
    per_image = CachedViews(tmp_path / "c.h5", samples, make_sampler(), views="random")
    assert len(per_image) == 10 and per_image.labelled_items().sum() == 6

    info = cache_info(tmp_path / "c.h5")
    assert (info["labelled_views"], info["unlabelled_views"], info["unreadable_views"]) == (18, 15, 3)
    assert "18 labelled views, 15 unlabelled (of which 3 of unreadable images" in format_cache_info(info)
    assert build(tmp_path / "c.h5", samples)["unreadable"] == 1  # a complete cache still says so

    broken_label = samples[:6] + [samples[0].__class__(samples[7].path, 0.5, 0.5, split="train")]
    with pytest.raises(DataError, match="p001.png"):  # a broken *labelled* image is still an error
        build(tmp_path / "d.h5", broken_label)


def test_resumed_and_sharded_caches_with_a_pool_equal_the_uninterrupted_one(tmp_path, monkeypatch):
    samples = pool_samples(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build(tmp_path / "clean.h5", samples)
        original, calls = partial_file.write_batch, []

        def interrupted(sink, batch, arrays):
            if len(calls) == 6:  # batches of 4 rows: the corrupt image's rows 21-23 are in the 6th, already written
                raise KeyboardInterrupt
            calls.append(1)
            original(sink, batch, arrays)

        monkeypatch.setattr(partial_file, "write_batch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build(tmp_path / "c.h5", samples)
        monkeypatch.setattr(partial_file, "write_batch", original)
        assert (tmp_path / "c.h5.partial").exists() and not (tmp_path / "c.h5").exists()
    with pytest.warns(UserWarning, match="skipped 1 unreadable unlabelled image") as said:
        resumed = build(tmp_path / "c.h5", samples)
    assert resumed["skipped"] == 24 and resumed["written"] == 9 and resumed["unreadable"] == 1
    assert "the first" not in str(said[0].message)  # met by the interrupted run, counted from the file
    same_arrays(tmp_path / "clean.h5", tmp_path / "c.h5")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):
            build(tmp_path / "s.h5", samples, shard=(i, 3))
    assert len(CachedViews(tmp_path / "s.h5", samples, make_sampler())) == 30  # joined on first read
    same_arrays(tmp_path / "clean.h5", tmp_path / "s.h5")


# ----------------------------------------------------------------------------- losses and batches
def test_label_terms_skip_unlabelled_rows_teacher_terms_do_not():
    fit = FitConfig(losses=[LossTerm(name="mse"), LossTerm(name="margin_ranking", weight=0.5)])
    distill = DistillConfig(teacher_score=[LossTerm(name="mse", weight=2.0)])
    module = DistillModule(nn.Linear(1, 1), fit, distill)
    score = torch.tensor([0.2, 0.9, 0.5, 0.1], requires_grad=True)
    batch = {"mos": torch.tensor([0.4, math.nan, 0.0, math.nan]), "teacher": {"score": torch.tensor([0.3, 0.7, 0.5, 0.4])}}
    total, parts = module.distill_loss({"score": score, "features": {}}, batch)
    # by hand: rows 0 and 2 are labelled. MSE ((0.2-0.4)^2 + (0.5-0.0)^2) / 2 = 0.145; ranking (margin 0)
    # over the ordered pairs (0, 2) and (2, 0): relu(-(+1)(0.2-0.5)) = relu(-(-1)(0.5-0.2)) = 0.3, mean 0.3;
    # teacher MSE over all four rows: (0.01 + 0.04 + 0 + 0.09) / 4 = 0.035, weight 2.
    assert parts["label/mse"].item() == pytest.approx(0.145)
    assert parts["label/margin_ranking"].item() == pytest.approx(0.3)
    assert parts["kd_score/mse"].item() == pytest.approx(0.035)
    assert total.item() == pytest.approx(0.145 + 0.5 * 0.3 + 2 * 0.035)
    total.backward()
    assert torch.isfinite(score.grad).all() and score.grad[1] != 0  # unlabelled rows learn from the teacher

    none = {"mos": torch.full((4,), math.nan), "teacher": batch["teacher"]}
    total, parts = module.distill_loss({"score": score, "features": {}}, none)
    assert parts["label/mse"].item() == 0.0 and parts["label/margin_ranking"].item() == 0.0
    assert total.item() == pytest.approx(2 * 0.035)
    labelled = torch.tensor([0.4, 0.1, 0.0, 0.8])
    assert torch.equal(module.masked_label_loss(score, labelled)[0], module.loss(score, labelled)[0])


def test_mixed_batches_hold_the_pool_share_and_cover_both_streams():
    assert [pool_share(8, f) for f in (0, 0.01, 0.25, 0.5, 0.99, 1)] == [0, 1, 2, 4, 7, 8]
    labelled = np.array([True] * 10 + [False] * 30)
    sampler = MixedSampler(labelled, 8, 0.25, seed=3)
    assert len(sampler) == 40  # as many batches as the 40 items fill
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = np.array(list(sampler)).reshape(5, 8)
        assert labelled[order[:, :6]].all() and not labelled[order[:, 6:]].any()  # 6 labelled + 2 pool each
        assert np.bincount(order[:, :6].ravel(), minlength=10)[:10].tolist() == [3] * 10  # 30 draws, 3 each
        epochs.append(order)
    pool_drawn = np.concatenate([e[:, 6:].ravel() for e in epochs])
    assert sorted(pool_drawn.tolist()) == list(range(10, 40))  # 10 a epoch: the whole pool in 3 epochs
    sampler.set_epoch(1)
    assert np.array_equal(np.array(list(MixedSampler(labelled, 8, 0.25, seed=3))).reshape(5, 8), epochs[0])
    assert not np.array_equal(np.array(list(sampler)).reshape(5, 8), epochs[0])

    ranks = [MixedSampler(labelled, 4, 0.5, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    shares = [np.array(list(r)).reshape(-1, 4) for r in ranks]
    assert all(len(s) == 5 for s in shares)  # 40 items, global batch 8
    pool_items = np.concatenate([s[:, 2:].ravel() for s in shares])
    assert len(set(pool_items.tolist())) == 20  # the two processes draw disjoint pool items
    with pytest.raises(ConfigError, match="asks for unlabelled items in every batch, and the training set holds none"):
        MixedSampler(np.ones(8, dtype=bool), 4, 0.5)


# ----------------------------------------------------------------------------- stages
@pytest.fixture
def pool_run(toy_recipe, tmp_path):
    folder = tmp_path / "pool"
    write_images(folder, 12, corrupt=(4,))

    def make(*overrides: str):
        recipe = load_recipe(toy_recipe, [*KD_SETTINGS, f"data.unlabelled.folder={folder}", *overrides])
        run = prepare_run(recipe)
        torch.manual_seed(0)
        TEACHERS.build("toy").save_pretrained(run.teacher)  # an untrained teacher is enough here
        return recipe, run

    return make


@pytest.mark.parametrize("source,fraction", [("cache", "0.5"), ("online", "null")])
def test_a_pool_caches_and_distils_while_the_baseline_sees_labels_only(pool_run, monkeypatch, source, fraction):
    recipe, run = pool_run(f"distill.source={source}", f"distill.unlabelled_fraction={fraction}")
    seen: dict[str, Any] = {}
    fit_student = student_stages.fit_student

    def spy(recipe, run, key, module, dm):
        seen[key] = (module, dm)
        return fit_student(recipe, run, key, module, dm)

    monkeypatch.setattr(student_stages, "fit_student", spy)
    if source == "cache":
        with pytest.warns(UserWarning, match="skipped 1 unreadable unlabelled image"):
            assert stage_cache(recipe, run)["unreadable"] == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kd = student_stages.stage_distill(recipe, run)
    if source == "online":
        assert sum("skipped 1 unreadable image" in str(w.message) for w in caught) == 1
    baseline = student_stages.stage_baseline(recipe, run)
    assert all("srcc" in r[split] for r in (kd, baseline) for split in ("val", "test"))

    n_train = len(seen["label_only"][1].splits["train"])
    kd_loader = seen["kd"][1].train_dataloader()
    labels = torch.cat([b["mos"] for b in kd_loader])
    if source == "cache":  # 2 views of each image, epoch_views random: one item per image, 11 readable pool images
        assert len(kd_loader.dataset) == n_train + 11
        assert all(torch.isnan(b["mos"]).sum() == 4 for b in kd_loader)  # half of every batch of 8 is pool
    else:
        assert len(kd_loader.dataset) == n_train + 11 and int(torch.isnan(labels).sum()) == 11
    base_loader = seen["label_only"][1].train_dataloader()
    assert len(base_loader.dataset) == n_train and all(is_labelled(s) for s in base_loader.dataset.samples)
    for dm in (seen["kd"][1], seen["label_only"][1]):
        for loader in (dm.val_dataloader(), dm.test_dataloader()):
            assert all(torch.isfinite(b["mos"]).all() for b in loader)  # validation and test stay labelled


def test_a_mix_knob_without_a_pool_is_refused_when_the_recipe_loads(toy_recipe):
    with pytest.raises(ConfigError, match="distill.unlabelled_fraction: set, but the recipe has no unlabelled pool"):
        load_recipe(toy_recipe, [*KD_SETTINGS, "distill.unlabelled_fraction=0.5", "distill.source=online"])


# ----------------------------------------------------------------------------- mini
def test_mini_pool_is_extra_training_images_without_labels(tmp_path, capsys):
    from kdiqa.data.mini import make_mini

    options = {"size": 32, "n_train": 12, "n_val": 4, "n_test": 4, "seed": 3}
    make_mini(tmp_path / "mini", **options, progress=False)
    cfg = DataConfig(name="mini", root=str(tmp_path / "mini"), options=options, unlabelled=UnlabelledConfig(mini=10))
    dm = IQADataModule(cfg, ViewConfig())
    pool = dm.pool()
    assert pool is not None and len(pool.samples) == 10
    folder = tmp_path / "mini" / "unlabelled-10"
    meta = json.loads((tmp_path / "mini" / "meta.json").read_text())
    with open(folder / "list.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "group"]  # no label column
    groups = {r["group"] for r in rows}
    # crops of the training photographs only, and dead-leaves images cut from them (half, as the teacher's stream)
    assert groups <= {*meta["photographs"]["train"], "dead_leaves"} and "dead_leaves" in groups and len(groups) > 1
    train_bytes = {Path(s.path).read_bytes() for s in dm.splits["train"]}
    for s in pool.samples:
        with Image.open(s.path) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
        assert Path(s.path).read_bytes() not in train_bytes  # its own seed stream: no repeated crop

    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert len(IQADataModule(cfg, dm.views).pool().samples) == 10 and (folder / "meta.json").stat().st_mtime_ns == stamp
    make_mini(tmp_path / "again", **options, progress=False)
    again = load_pool(DataConfig(name="mini", root=str(tmp_path / "again"), unlabelled=UnlabelledConfig(mini=10)), [])
    assert [Path(s.path).read_bytes() for s in again.samples] == [Path(s.path).read_bytes() for s in pool.samples]

    recipe = tmp_path / "mini.yaml"
    recipe.write_text(f"data: {{name: mini, root: {tmp_path / 'mini'}, options: {json.dumps(options)}, unlabelled: {{mini: 10}}}}\n")
    assert main(["data", "info", str(recipe), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [summary[s]["count"] for s in ("train", "val", "test")] == [12, 4, 4]
    assert summary["unlabelled"]["count"] == 10 and summary["unlabelled"]["source"].startswith("mini: 10 extra crops")
