"""The embedded default dataset: determinism, leak-free splits, label sanity and atomic building."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdiqa.data.mini.dataset as mini_dataset
from kdiqa.data.distortions import DISTORTIONS, apply_distortion
from kdiqa.data.mini import PHOTO_KINDS, PHOTOGRAPHS, make_mini, split_photographs
from kdiqa.data.mini.label import MS_SSIM_BETAS, ms_ssim, pseudo_mos
from kdiqa.data.mini.synthesis import is_flat, make_sample, random_crop
from kdiqa.errors import DataError
from kdiqa.registry import DATASETS

TINY = dict(size=32, n_train=24, n_val=8, n_test=8, seed=3, progress=False)


def _rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return make_mini(tmp_path_factory.mktemp("mini") / "mini", **TINY)


def _textured(size: int = 96, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)


def test_csv_format_and_contents(built):
    root = built.parent
    assert built.name == "labels.csv"
    assert built.read_text().splitlines()[0] == "path,mos,std,split,group"
    rows = _rows(built)
    assert [r["split"] for r in rows] == ["train"] * 24 + ["val"] * 8 + ["test"] * 8
    for split in ("train", "val", "test"):
        paths = [r["path"] for r in rows if r["split"] == split]
        assert paths == [f"images/{split}/{i:06d}.png" for i in range(len(paths))]
    for r in rows:
        assert 0.0 <= float(r["mos"]) <= 1.0
        assert r["std"] == ""
        assert r["group"] in PHOTOGRAPHS
        with Image.open(root / r["path"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["version"] == mini_dataset.VERSION and meta["seed"] == 3 and meta["size"] == 32
    assert meta["counts"] == {"train": 24, "val": 8, "test": 8}
    assert set(meta["distortions"]) == set(DISTORTIONS)
    assert sum(meta["samples_per_distortion"].values()) == 40
    # A clean sample is labelled exactly 1; details.csv says which samples are clean.
    details = {d["path"]: d for d in _rows(root / "details.csv")}
    assert set(details) == {r["path"] for r in rows}
    for r in rows:
        if details[r["path"]]["distortion"] == "none":
            assert float(r["mos"]) == 1.0


def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    again = make_mini(tmp_path / "again", **TINY)
    assert again.read_bytes() == built.read_bytes()
    for r in _rows(built):
        assert (again.parent / r["path"]).read_bytes() == (built.parent / r["path"]).read_bytes()
    assert (again.parent / "meta.json").read_bytes() == (built.parent / "meta.json").read_bytes()
    other = make_mini(tmp_path / "other", **{**TINY, "seed": 4})
    assert other.read_bytes() != built.read_bytes()


def test_worker_processes_build_the_same_bytes(built, tmp_path, monkeypatch):
    """Every image has its own seeded generator: two processes write what one does, pool included."""
    from kdiqa.data.mini import make_mini_pool
    from kdiqa.data.mini import pool as mini_pool

    monkeypatch.setattr(mini_dataset, "CHUNK", 5)  # several jobs per split, so both workers get some
    monkeypatch.setattr(mini_pool, "CHUNK", 4)
    parallel = make_mini(tmp_path / "parallel", **TINY, workers=2)
    files = sorted(p.relative_to(built.parent) for p in built.parent.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(parallel.parent) for p in parallel.parent.rglob("*") if p.is_file())
    assert all((built.parent / f).read_bytes() == (parallel.parent / f).read_bytes() for f in files)
    one = make_mini_pool(parallel.parent, 10, progress=False, workers=0)
    (parallel.parent / "unlabelled-10").rename(tmp_path / "pool-in-process")
    two = make_mini_pool(parallel.parent, 10, progress=False, workers=2)
    assert [g for _, g in one] == [g for _, g in two] and len(two) == 10
    folder = parallel.parent / "unlabelled-10"
    for f in ("list.csv", "meta.json", *(f"images/{i:06d}.png" for i in range(10))):
        assert (folder / f).read_bytes() == (tmp_path / "pool-in-process" / f).read_bytes()


def test_large_builds_use_one_worker_per_core_small_ones_none(monkeypatch):
    from kdiqa.data.mini.workers import MIN_PARALLEL_IMAGES, default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert default_workers(MIN_PARALLEL_IMAGES - 1) == 0 and default_workers(MIN_PARALLEL_IMAGES) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers(100_000) == 0


def test_split_by_photograph(built):
    meta = json.loads((built.parent / "meta.json").read_text())
    groups = {split: {r["group"] for r in _rows(built) if r["split"] == split} for split in ("train", "val", "test")}
    for split, names in groups.items():
        assert names <= set(meta["photographs"][split])
    assert (
        not groups["train"] & groups["val"]
        and not groups["train"] & groups["test"]
        and not groups["val"] & groups["test"]
    )

    names = [f"p{i}" for i in range(18)]
    split = split_photographs(names, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [12, 3, 3]
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(names)
    assert split == split_photographs(list(reversed(names)), seed=0)  # order of discovery is irrelevant
    assert split != split_photographs(names, seed=1)
    for seed in range(3):  # the real photographs: every held-out set shows each kind of content once
        split = split_photographs(PHOTOGRAPHS, seed)
        for held in (split["val"], split["test"]):
            assert sorted(PHOTO_KINDS[n] for n in held) == ["scene", "science", "texture"]


def test_label_falls_monotonically_with_distortion_level():
    ref, _ = random_crop(_textured(), 48, np.random.default_rng(0))
    levels = np.linspace(0.0, 1.0, 6)
    for kind in ("blur", "contrast"):
        dists = [apply_distortion(ref, kind, float(lv), np.random.default_rng(0)) for lv in levels]
        q = pseudo_mos(np.stack([ref] * len(levels)), np.stack(dists))
        assert np.all(np.diff(q) < 0), (kind, q)
        assert 0.0 <= q.min() and q.max() < 1.0
    assert pseudo_mos(ref[None], ref[None])[0] == 1.0



def test_ms_ssim_matches_torchmetrics(one_thread):
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    rng = np.random.default_rng(1)
    ref = np.stack([random_crop(_textured(seed=s), 48, rng)[0] for s in range(4)])
    kinds = ("blur", "noise", "jpeg", "contrast")
    dist = np.stack([apply_distortion(r, k, 0.6, rng) for r, k in zip(ref, kinds, strict=True)])
    x = torch.from_numpy(dist).permute(0, 3, 1, 2).double()
    y = torch.from_numpy(ref).permute(0, 3, 1, 2).double()
    betas = tuple(b / sum(MS_SSIM_BETAS) for b in MS_SSIM_BETAS)
    expected = tm_ms_ssim(x, y, data_range=255.0, betas=betas, reduction="none")
    assert torch.allclose(ms_ssim(x, y), expected, atol=2e-5)
    assert 0.05 < float(expected.min()) and float(expected.max()) < 0.999  # the check is not vacuous


def test_flat_crops_are_rejected():
    rng = np.random.default_rng(0)
    flat = np.full((32, 32, 3), 120, np.uint8) + rng.integers(0, 3, (32, 32, 3), dtype=np.uint8)
    assert is_flat(flat)
    assert is_flat(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3)) // 4)  # smooth ramp
    textured, _ = random_crop(_textured(), 32, rng)
    assert not is_flat(textured)

    photos = {"flat": Image.fromarray(np.full((80, 80, 3), 90, np.uint8)), "textured": _textured()}
    for i in range(30):
        ref, dist, spec = make_sample(photos, ["flat", "textured"], 32, np.random.default_rng([0, i]))
        assert spec.photo == "textured" and not is_flat(ref)
        assert dist.shape == ref.shape == (32, 32, 3)
    with pytest.raises(DataError, match="no textured 32px crop"):
        make_sample({"flat": photos["flat"]}, ["flat"], 32, np.random.default_rng(0))


def test_existing_complete_folder_is_reused(tmp_path):
    root = tmp_path / "mini"
    make_mini(root, **TINY)
    stamp = (root / "labels.csv").stat().st_mtime_ns
    marker = root / "images" / "train" / "000000.png"
    marker.write_bytes(b"not rebuilt")
    assert make_mini(root, **TINY) == root / "labels.csv"
    assert (root / "labels.csv").stat().st_mtime_ns == stamp and marker.read_bytes() == b"not rebuilt"
    # Different parameters: rebuilt in place, and the old content is gone.
    make_mini(root, **{**TINY, "n_train": 12})
    assert len(_rows(root / "labels.csv")) == 28 and marker.read_bytes() != b"not rebuilt"
    assert json.loads((root / "meta.json").read_text())["params"]["n_train"] == 12
    assert [p.name for p in tmp_path.iterdir()] == ["mini"]  # no temporary folder left beside it


def test_incomplete_folders_are_never_taken_as_complete(built, tmp_path):
    root = tmp_path / "mini"
    # The leftover of a build that was killed: a temp folder beside the target, with images but no meta.
    stale = tmp_path / ".mini.building-dead"
    (stale / "images" / "train").mkdir(parents=True)
    (stale / "labels.csv").write_text("path,mos,std,split,group\n")
    make_mini(root, **TINY)
    assert (root / "labels.csv").read_bytes() == built.read_bytes()
    # Our folder with a truncated label file, or from an older version, is rebuilt rather than reused.
    (root / "labels.csv").write_text("path,mos,std,split,group\n")
    make_mini(root, **TINY)
    assert (root / "labels.csv").read_bytes() == built.read_bytes()
    meta = json.loads((root / "meta.json").read_text())
    meta["params"]["version"] = 0
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "images" / "val" / "000000.png").unlink()
    make_mini(root, **TINY)
    assert (root / "images" / "val" / "000000.png").is_file()
    assert json.loads((root / "meta.json").read_text())["params"]["version"] == mini_dataset.VERSION


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mini_dataset, "_write_tables", boom)
    with pytest.raises(KeyboardInterrupt):
        make_mini(tmp_path / "mini", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(DataError, match="not a mini dataset folder"):
        make_mini(root, **TINY)
    assert (root / "holiday.jpg").read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": 16}, "too small"), ({"n_val": -1}, "n_val must be >= 0"), ({"seed": -2}, "seed must be")],
)
def test_bad_parameters(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        make_mini(tmp_path / "mini", **{**TINY, **kwargs})


def test_every_distortion_changes_the_image_and_bad_ones_are_refused():
    ref, _ = random_crop(_textured(), 32, np.random.default_rng(0))
    for name in DISTORTIONS:
        out = apply_distortion(ref, name, 1.0, np.random.default_rng(0))
        assert out.shape == ref.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - ref).mean() > 1.0, name
    with pytest.raises(DataError, match="unknown distortion 'rain'"):
        apply_distortion(ref, "rain", 0.5, np.random.default_rng(0))
    with pytest.raises(DataError, match="outside"):
        apply_distortion(ref, "blur", 1.5, np.random.default_rng(0))


def test_mini_loader_reads_through_the_csv_loader(built):
    if "csv" not in DATASETS:
        pytest.skip("the csv loader is not available")
    loaded = DATASETS.get("mini")(str(built.parent), size=32, n_train=24, n_val=8, n_test=8, seed=3)
    assert loaded.name == "mini" and loaded.has_official_split
    assert len(loaded.samples) == 40
    assert {s.split for s in loaded.samples} == {"train", "val", "test"}
    rows = _rows(built)
    for s, r in zip(loaded.samples, rows, strict=True):
        assert s.group == r["group"] and s.mos == pytest.approx(float(r["mos"]))
        assert Path(s.path) == (built.parent / r["path"]).resolve()
