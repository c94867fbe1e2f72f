"""The feature cache: what it stores, how it is read back, fingerprints, shards, info.

Fault tolerance (SIGKILL, write errors) is in test_cache_faults.py, which reuses the helpers here.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import pickle
import time
import tracemalloc
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from kdiqa.cache import (
    CachedViews,
    CacheError,
    CachePlan,
    CacheSpec,
    build_cache,
    cache_info,
    dataset_fingerprint,
    draw_view,
    format_cache_info,
    merge_shards,
    teacher_fingerprint,
    view_fingerprint,
)
from kdiqa.data.sample import IQASample
from kdiqa.data.views import ViewSampler
from kdiqa.errors import ConfigError
from kdiqa.teachers.base import Teacher, TeacherOutput


# ----------------------------------------------------------------------------- helpers (shared)
class FakeTeacher(Teacher):
    """Two convolutions and a head, deterministic from ``seed``: stands in for any teacher."""

    name = "fake-cache-teacher"

    def __init__(self, width: int = 4, bins: int = 5, seed: int = 0):
        super().__init__(width=width, bins=bins, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(3, width, 3, padding=1)
            self.conv2 = nn.Conv2d(width, 8, 3, stride=2, padding=1)
            self.head = nn.Linear(8, bins)
        self.drop = nn.Dropout(0.5)  # outputs change in training mode: the cache must run it in eval mode
        self.sleep = 0.0  # set to slow a run down so a test can kill it midway; not in the config (outputs do not change)

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        if self.sleep:
            time.sleep(self.sleep)
        fmap = self.conv2(torch.relu(self.conv1(images)))
        logits = self.head(self.drop(fmap.mean((2, 3))))
        features = {"quality_map": fmap, "embedding": logits, "unused": fmap * 2}
        return TeacherOutput(score=logits[:, 0], dist=logits.softmax(1), features=features)


def make_samples(root: Path, n: int = 12) -> list[IQASample]:
    """Small images of assorted sizes (so crops differ by image), labelled and split 2:1."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    samples = []
    for i in range(n):
        path = root / f"img{i:03d}.png"
        if not path.exists():
            h, w = 18 + (i * 5) % 13, 20 + (i * 7) % 11
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        split = "train" if i % 3 else "val"
        samples.append(IQASample(str(path), mos=(i % 7) / 6, mos_raw=float(i % 7), split=split))
    return samples


def make_sampler() -> ViewSampler:
    return ViewSampler(16, train=True, scale=(0.3, 1.0), ratio=(0.75, 1.33), flip=True)


BUILD = dict(views_per_image=3, batch_size=4, features=["quality_map", "embedding"], pool={"quality_map": 4}, seed=7)
SPEC_FIELDS = set(CacheSpec.__dataclass_fields__)


def build(path: Path, samples: list[IQASample], teacher: nn.Module | None = None, **overrides: Any) -> dict[str, Any]:
    """``overrides``: CacheSpec fields, or build_cache's own arguments (shard, force, num_workers, ...)."""
    kwargs = {**BUILD, "progress": False, **overrides}
    spec = CacheSpec(make_sampler(), **{k: kwargs.pop(k) for k in list(kwargs) if k in SPEC_FIELDS})
    return build_cache(spec, teacher or FakeTeacher(), samples, path, **kwargs)


def read_all(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return arrays


def assert_same_arrays(a: Path, b: Path) -> None:
    left, right = read_all(a), read_all(b)
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        assert np.array_equal(left[name], right[name]), f"dataset {name} differs"


def child_build(args: dict[str, Any]) -> None:
    """Body of the child processes of the shard and SIGKILL tests."""
    torch.set_num_threads(1)
    samples = make_samples(Path(args["images"]), args.get("n", 12))
    teacher = FakeTeacher()
    teacher.sleep = args.get("sleep", 0.0)
    build(Path(args["path"]), samples, teacher, **args.get("overrides", {}))


def start_child(args: dict[str, Any]) -> mp.process.BaseProcess:
    """A separate OS process (forked, so it need not import torch again: that alone takes seconds)."""
    proc = mp.get_context("fork").Process(target=child_build, args=(args,), daemon=True)
    proc.start()
    return proc


class one_thread:
    """Build in-process with the thread count the child processes use, so results are comparable bit for bit."""

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.before)


@pytest.fixture
def samples(tmp_path) -> list[IQASample]:
    return make_samples(tmp_path / "images")


# ----------------------------------------------------------------------------- plan and views
def test_views_are_a_function_of_seed_image_and_view_only():
    sampler = make_sampler()
    a = draw_view(sampler, (30, 20), seed=7, image_index=3, view_id=2, first_view_eval=True)
    b = draw_view(sampler, (30, 20), seed=7, image_index=3, view_id=2, first_view_eval=True)
    assert a == b
    assert draw_view(sampler, (30, 20), 7, 3, 1, True) != a
    assert draw_view(sampler, (30, 20), 8, 3, 2, True) != a
    assert draw_view(sampler, (30, 20), 7, 3, 0, True) == sampler.eval_params()
    assert draw_view(sampler, (30, 20), 7, 3, 0, False) != sampler.eval_params()


def test_shards_take_whole_batches_and_tile_the_rows():
    plans = [CachePlan(10, 3, 4, i, 3) for i in range(3)]
    assert [p.rows for p in plans] == [(0, 8), (8, 20), (20, 30)]
    assert plans[1].blocks() == [(8, 12), (12, 16), (16, 20)]
    assert CachePlan(10, 3, 4).blocks()[-1] == (28, 30)
    with pytest.raises(ConfigError, match="at most 8 shards"):
        CachePlan(10, 3, 4, 0, 9)


# ----------------------------------------------------------------------------- what is stored
def test_cache_stores_teacher_outputs_for_replayable_views(tmp_path, samples):
    teacher = FakeTeacher().train()
    summary = build(tmp_path / "c.h5", samples, teacher)
    assert teacher.training  # its mode is given back
    assert summary["complete"] and summary["written"] == 36 and summary["views"] == 36
    assert not (tmp_path / "c.h5.partial").exists()
    arrays = read_all(tmp_path / "c.h5")
    assert arrays["index"].tolist() == [i for i in range(12) for _ in range(3)]
    assert arrays["view_id"].tolist() == [0, 1, 2] * 12
    assert arrays["done"].all()
    assert np.allclose(arrays["mos"], [samples[i].mos for i in arrays["index"]])
    assert arrays["features/quality_map"].shape == (36, 8, 4, 4) and arrays["features/quality_map"].dtype == np.float16
    assert arrays["features/embedding"].shape == (36, 5)
    assert arrays["teacher/score"].dtype == np.float32 and arrays["teacher/dist"].shape == (36, 5)
    assert "features/unused" not in arrays
    assert np.array_equal(arrays["params"][0], make_sampler().eval_params().to_array())
    assert len({tuple(p) for p in arrays["params"][1::3]}) == 12  # random views differ between images

    # the reader replays the same view: the teacher run on it online gives the stored targets
    data = CachedViews(tmp_path / "c.h5", samples, make_sampler())
    assert len(data) == 36
    teacher.eval()
    for row in (0, 4, 35):
        item = data[row]
        with torch.no_grad():
            online = teacher(item["image"][None])
        assert item["index"] == row // 3 and item["view_id"] == row % 3
        assert torch.allclose(item["teacher"]["score"], online.score[0], atol=1e-5)
        assert torch.allclose(item["teacher"]["dist"], online.dist[0], atol=1e-5)
        pooled = nn.functional.adaptive_avg_pool2d(online.features["quality_map"], 4)[0]
        assert torch.allclose(item["teacher"]["quality_map"], pooled, atol=2e-3, rtol=2e-3)  # fp16 storage
        assert item["teacher"]["quality_map"].dtype == torch.float32
        assert item["mos"].item() == pytest.approx(samples[row // 3].mos)


def test_float32_and_compression_store_the_same_values(tmp_path, samples):
    build(tmp_path / "plain.h5", samples, dtype="float32")
    for codec in ("lzf", "gzip"):
        build(tmp_path / f"{codec}.h5", samples, dtype="float32", compression=codec)
        assert_same_arrays(tmp_path / "plain.h5", tmp_path / f"{codec}.h5")
        info = cache_info(tmp_path / f"{codec}.h5")
        assert info["compression"] == codec and info["complete"]
        assert info["datasets"]["features/quality_map"]["compression"] == codec
        assert info["datasets"]["features/quality_map"]["chunks"] == [1, 8, 4, 4]  # one chunk per view
    assert read_all(tmp_path / "plain.h5")["features/quality_map"].dtype == np.float32


def test_views_rendered_in_loader_workers_give_the_same_file(tmp_path, samples):
    build(tmp_path / "serial.h5", samples)
    build(tmp_path / "workers.h5", samples, num_workers=2)
    assert_same_arrays(tmp_path / "serial.h5", tmp_path / "workers.h5")


def test_every_teacher_feature_by_default_and_bad_feature_requests(tmp_path, samples):
    build(tmp_path / "all.h5", samples, features=None, pool={})
    assert {"features/quality_map", "features/embedding", "features/unused"} <= set(read_all(tmp_path / "all.h5"))
    with pytest.raises(ConfigError, match="no feature 'nope'.*quality_map, embedding, unused"):
        build(tmp_path / "x.h5", samples, features=["nope"], pool={})
    with pytest.raises(ConfigError, match="cache.pool: 'unused' is not in cache.features"):
        build(tmp_path / "x.h5", samples, pool={"unused": 2})
    with pytest.raises(ConfigError, match="per view as float16; cache it pooled"):
        build(tmp_path / "x.h5", samples, pool={}, max_feature_bytes=512)
    with pytest.raises(ConfigError, match="need a training view sampler"):
        CacheSpec(ViewSampler(16, train=False), views_per_image=2)


# ----------------------------------------------------------------------------- fingerprints
def test_fingerprints_follow_what_they_cover(samples):
    a, b = FakeTeacher(seed=0), FakeTeacher(seed=0)
    assert teacher_fingerprint(a) == teacher_fingerprint(b)
    with torch.no_grad():
        b.head.bias.add_(1e-3)
    assert teacher_fingerprint(a) != teacher_fingerprint(b)
    assert teacher_fingerprint(FakeTeacher(width=5)) != teacher_fingerprint(a)
    relabelled = [samples[0].__class__(s.path, s.mos + 0.01, s.mos_raw, split=s.split) for s in samples]
    assert dataset_fingerprint(samples) != dataset_fingerprint(relabelled)
    assert dataset_fingerprint(samples) != dataset_fingerprint(samples[::-1])
    assert view_fingerprint(make_sampler(), 3, True, 0) != view_fingerprint(make_sampler(), 2, True, 0)


def test_rerun_is_a_no_op_and_a_stale_cache_is_refused_by_name(tmp_path, samples):
    path = tmp_path / "c.h5"
    build(path, samples)
    before = path.stat().st_mtime_ns
    assert build(path, samples)["written"] == 0
    assert path.stat().st_mtime_ns == before

    other = FakeTeacher(seed=1)
    with pytest.raises(CacheError, match=r"c\.h5: teacher fingerprint differs .*--force"):
        build(path, samples, other)
    with pytest.raises(CacheError, match="views fingerprint differs"):
        build(path, samples, views_per_image=2)
    with pytest.raises(CacheError, match="targets fingerprint differs"):
        build(path, samples, dtype="float32")
    with pytest.raises(CacheError, match="dataset fingerprint differs"):
        build(path, samples[:-1])
    assert build(path, samples, other, force=True)["written"] == 36

    # the reader checks the dataset itself and whatever the caller expects
    with pytest.raises(CacheError, match="dataset fingerprint differs"):
        CachedViews(path, samples[:-1], make_sampler())
    with pytest.raises(CacheError, match="teacher fingerprint differs"):
        CachedViews(path, samples, make_sampler(), {"teacher": teacher_fingerprint(FakeTeacher(seed=0))})
    CachedViews(path, samples, make_sampler(), {"teacher": teacher_fingerprint(other)})


# ----------------------------------------------------------------------------- reading
def test_reader_selects_splits_views_and_features(tmp_path, samples):
    build(tmp_path / "c.h5", samples)
    train = CachedViews(tmp_path / "c.h5", samples, make_sampler(), split="train")
    assert len(train) == 8 * 3
    assert all(samples[train[j]["index"]].split == "train" for j in range(len(train)))
    no_eval = CachedViews(tmp_path / "c.h5", samples, make_sampler(), view_ids=[1, 2], features=["embedding"])
    assert len(no_eval) == 24 and {no_eval[j]["view_id"] for j in range(24)} == {1, 2}
    assert set(no_eval[0]["teacher"]) == {"score", "dist", "embedding"}
    one = CachedViews(tmp_path / "c.h5", samples, make_sampler(), split="val", views="random")
    assert len(one) == 4
    torch.manual_seed(0)
    seen = {one[0]["view_id"] for _ in range(30)}
    assert seen == {0, 1, 2}  # each access draws one of the image's views
    assert {one[j]["index"] for j in range(4)} == {0, 3, 6, 9}
    with pytest.raises(CacheError, match="holds no feature 'unused'"):
        CachedViews(tmp_path / "c.h5", samples, make_sampler(), features=["unused"])
    # another student resolution replays the same crop at its own size
    big = CachedViews(tmp_path / "c.h5", samples, ViewSampler(32, train=False))
    assert big[5]["image"].shape == (3, 32, 32)


def test_reader_refuses_a_missing_cache_with_the_command_to_build_it(tmp_path, samples):
    with pytest.raises(CacheError, match=r"no cache here; build it with `kdiqa cache RECIPE`"):
        CachedViews(tmp_path / "none.h5", samples, make_sampler())


@pytest.mark.parametrize("workers,persistent", [(0, False), (2, True)])
def test_reader_in_dataloader_workers(tmp_path, samples, workers, persistent):
    build(tmp_path / "c.h5", samples)
    data = CachedViews(tmp_path / "c.h5", samples, make_sampler())
    expected = torch.stack([data[j]["teacher"]["quality_map"] for j in range(len(data))])  # opens a handle here
    pickle.loads(pickle.dumps(data))  # an open handle never travels with the dataset
    loader = DataLoader(data, batch_size=8, num_workers=workers, persistent_workers=persistent)
    for _epoch in range(2):
        batches = list(loader)
        got = torch.cat([b["teacher"]["quality_map"] for b in batches])
        assert torch.equal(got, expected)
        assert batches[0]["image"].shape == (8, 3, 16, 16) and batches[0]["image"].dtype == torch.float32
        assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(12).repeat_interleave(3))
    data.close()


# ----------------------------------------------------------------------------- shards
def test_two_processes_write_shards_that_merge_into_the_single_process_cache(tmp_path, samples):
    images = tmp_path / "images"
    procs = [start_child({"images": str(images), "path": str(tmp_path / "c.h5"), "overrides": {"shard": (i, 2)}})
             for i in range(2)]
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    with one_thread():
        build(tmp_path / "single.h5", samples)
    assert not (tmp_path / "c.h5").exists()
    merge_shards(tmp_path / "c.h5", progress=False)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["features/quality_map"].is_virtual  # joined, not copied
    assert (tmp_path / "c.h5").stat().st_size < 20_000
    assert_same_arrays(tmp_path / "single.h5", tmp_path / "c.h5")
    assert build(tmp_path / "c.h5", samples)["written"] == 0  # the merged cache satisfies the recipe
    info = cache_info(tmp_path / "c.h5")
    assert info["complete"] and info["merged_from"] == ["c.h5.shard-0-of-2.h5", "c.h5.shard-1-of-2.h5"]
    data = CachedViews(tmp_path / "c.h5", samples, make_sampler())
    assert torch.equal(data[20]["teacher"]["quality_map"], torch.from_numpy(read_all(tmp_path / "single.h5")["features/quality_map"][20].astype(np.float32)))


def test_reader_merges_finished_shards_and_explains_missing_ones(tmp_path, samples):
    path = tmp_path / "c.h5"
    build(path, samples, shard=(1, 3))
    with pytest.raises(CacheError, match=r"shard 0/3 is not finished; run `kdiqa cache RECIPE --shard 0/3`"):
        CachedViews(path, samples, make_sampler())
    build(path, samples, shard=(0, 3))
    build(path, samples, shard=(2, 3))
    assert len(CachedViews(path, samples, make_sampler())) == 36  # the first reader joins them
    assert path.exists()
    # a merged cache whose shard disappeared is refused (virtual datasets would read zeros)
    (tmp_path / "c.h5.shard-2-of-3.h5").rename(tmp_path / "elsewhere.h5")
    with pytest.raises(CacheError, match="shard file c.h5.shard-2-of-3.h5 it joins is missing"):
        CachedViews(path, samples, make_sampler())
    assert not cache_info(path)["complete"]


# ----------------------------------------------------------------------------- info and scale
def test_cache_info_reports_layout_sizes_fingerprints(tmp_path, samples):
    build(tmp_path / "c.h5", samples)
    info = cache_info(tmp_path / "c.h5")
    assert info["complete"] and info["views"] == info["views_done"] == 36
    assert info["images"] == 12 and info["views_per_image"] == 3
    assert info["datasets"]["features/quality_map"]["bytes_per_view"] == 8 * 4 * 4 * 2
    assert info["bytes_per_view"] == sum(d["bytes_per_view"] for d in info["datasets"].values())
    assert info["data_bytes"] == 36 * info["bytes_per_view"] and info["file_bytes"] > info["data_bytes"]
    assert set(info["fingerprints"]) == {"teacher", "dataset", "views", "targets"}
    text = format_cache_info(info)
    assert "complete, ready to read" in text and "features/quality_map" in text and "8×4×4" in text
    json.dumps(info)  # plain data, for --json


def test_memory_stays_flat_as_the_dataset_grows(tmp_path):
    peaks = []
    for n in (8, 40):
        samples = make_samples(tmp_path / f"img{n}", n)
        tracemalloc.start()
        build(tmp_path / f"c{n}.h5", samples, views_per_image=2)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks  # 5x the views, not 5x the memory
