"""The cache under faults: SIGKILL at any point, write errors, corrupt files, bad teacher outputs."""
from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from test_cache import FakeTeacher, assert_same_arrays, build, make_sampler, make_samples, one_thread, start_child

import kdiqa.cache.partial as partial_file
from kdiqa.cache import CachedViews, CacheError, cache_info


def done_rows(partial: Path) -> int:
    """Rows a running writer has finished, read without taking the writer's file lock."""
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return int(f["done"][...].sum())
    except (OSError, KeyError):
        return 0  # not created yet


def kill_when(proc, partial: Path, rows: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while done_rows(partial) < rows and proc.is_alive():
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.005)
    assert proc.is_alive(), "the writer finished before it could be killed; slow it down"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    return done_rows(partial)


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_file(tmp_path):
    images, path = tmp_path / "images", tmp_path / "c.h5"
    samples = make_samples(images, 16)
    partial = path.with_name("c.h5.partial")
    args: dict[str, Any] = {"images": str(images), "n": 16, "path": str(path), "sleep": 0.04,
                            "overrides": {"batch_size": 2}}
    first = kill_when(start_child(args), partial, 6)
    assert 6 <= first < 48 and not path.exists()
    with pytest.raises(CacheError, match=rf"c\.h5: cache is incomplete \({first} of 48 views written.*rerun `kdiqa cache RECIPE`"):
        CachedViews(path, samples, make_sampler())
    info = cache_info(path)
    assert not info["complete"] and info["views_done"] == first

    # a second kill, at whatever point the resumed writer has reached after a short while
    proc = start_child(args)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    second = done_rows(partial)
    assert second >= first

    with one_thread():
        resumed = build(path, samples, batch_size=2)
        build(tmp_path / "clean.h5", samples, batch_size=2)
    assert resumed["skipped"] == second and resumed["written"] == 48 - second
    assert_same_arrays(tmp_path / "clean.h5", path)
    assert not partial.exists()


def test_writes_never_touch_hdf5_metadata(tmp_path, monkeypatch):
    """Why a kill at any instant is safe: after creation only raw data bytes change, and those of a
    batch are flushed before its done flags; so the structure a rerun opens is always intact."""
    samples = make_samples(tmp_path / "images", 6)
    original = partial_file.write_batch
    state: dict[str, Any] = {}

    def checked(sink: partial_file.Sink, batch: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        f = sink.file
        extents = []
        f.visititems(lambda name, obj: extents.extend(_extents(obj)) if isinstance(obj, h5py.Dataset) else None)
        f.flush()
        if "before" not in state:
            state["before"] = np.fromfile(f.filename, dtype=np.uint8)
        original(sink, batch, arrays)
        after = np.fromfile(f.filename, dtype=np.uint8)
        assert len(after) == len(state["before"])
        outside = np.ones(len(after), dtype=bool)
        for start, size in extents:
            outside[start : start + size] = False
        assert np.array_equal(after[outside], state["before"][outside])
        state["batches"] = state.get("batches", 0) + 1

    monkeypatch.setattr(partial_file, "write_batch", checked)
    build(tmp_path / "c.h5", samples)
    assert state["batches"] == 5


def _extents(ds: h5py.Dataset) -> list[tuple[int, int]]:
    if ds.chunks is None:
        return [(ds.id.get_offset(), ds.id.get_storage_size())]
    return [(info.byte_offset, info.size) for info in (ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks()))]


# the n-th batch's write to a dataset fails
@pytest.mark.parametrize("dataset,batch,done", [("/features/embedding", 3, 8), ("/done", 2, 4)])
def test_a_write_error_leaves_a_resumable_never_complete_file(tmp_path, monkeypatch, dataset, batch, done):
    samples = make_samples(tmp_path / "images")
    path = tmp_path / "c.h5"
    original = h5py.Dataset.write_direct
    calls = {"n": 0}

    def disk_full(self, source, *args, **kwargs):
        if self.name == dataset:
            calls["n"] += 1
            if calls["n"] == batch:
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "write_direct", disk_full)
    with pytest.raises(CacheError, match=rf"write failed after {done} of 36 views .*No space left on device.*resumable"):
        build(path, samples)
    monkeypatch.undo()
    assert not path.exists() and cache_info(path)["views_done"] == done
    with pytest.raises(CacheError, match="cache is incomplete"):
        CachedViews(path, samples, make_sampler())
    resumed = build(path, samples)
    assert (resumed["written"], resumed["skipped"]) == (36 - done, done)
    build(tmp_path / "clean.h5", samples)
    assert_same_arrays(tmp_path / "clean.h5", path)


def test_a_failed_compression_pass_is_finished_by_a_rerun(tmp_path, monkeypatch):
    samples = make_samples(tmp_path / "images", 6)
    path = tmp_path / "c.h5"

    def fail(*_args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partial_file, "_repack", fail)
    with pytest.raises(CacheError, match="every view is written but finishing the cache failed"):
        build(path, samples, compression="gzip")
    monkeypatch.undo()
    assert not path.exists()
    assert build(path, samples, compression="gzip")["written"] == 0
    assert cache_info(path)["complete"] and cache_info(path)["compression"] == "gzip"


def test_a_foreign_or_corrupt_file_is_refused_in_one_line(tmp_path):
    samples = make_samples(tmp_path / "images", 6)
    path = tmp_path / "c.h5"
    path.write_bytes(b"not an hdf5 file at all")
    for attempt in (lambda: build(path, samples), lambda: CachedViews(path, samples, make_sampler()), lambda: cache_info(path)):
        with pytest.raises(CacheError) as err:
            attempt()
        assert "cannot read cache file" in str(err.value) and "\n" not in str(err.value)
    assert build(path, samples, force=True)["complete"]
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CacheError, match="not a kdiqa feature cache"):
        CachedViews(tmp_path / "other.h5", samples, make_sampler())


def test_non_finite_teacher_output_names_the_image(tmp_path):
    samples = make_samples(tmp_path / "images", 6)

    class Overflowing(FakeTeacher):
        def forward(self, images: torch.Tensor):
            out = super().forward(images)
            out.features["quality_map"] = out.features["quality_map"] * 1e6  # beyond float16
            return out

    with pytest.raises(CacheError, match=r"img000\.png: teacher output 'features/quality_map' is not finite.*cache.dtype: float32"):
        build(tmp_path / "c.h5", samples, Overflowing())
    assert build(tmp_path / "c.h5", samples, Overflowing(), dtype="float32")["complete"]


def test_a_second_writer_is_refused_while_info_still_shows_progress(tmp_path):
    images, path = tmp_path / "images", tmp_path / "c.h5"
    samples = make_samples(images, 8)
    proc = start_child({"images": str(images), "n": 8, "path": str(path), "sleep": 0.05, "overrides": {"batch_size": 2}})
    try:
        while done_rows(path.with_name("c.h5.partial")) < 2:
            assert proc.is_alive()
            time.sleep(0.005)
        assert 2 <= cache_info(path)["views_done"] < 24
        with pytest.raises(CacheError, match="locked by another process"):
            build(path, samples, batch_size=2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()


def test_temporary_files_of_killed_runs_are_cleaned_up(tmp_path):
    samples = make_samples(tmp_path / "images", 4)
    old, fresh = tmp_path / ".c.h5.abc123.tmp", tmp_path / ".c.h5.partial.def456.tmp"
    for tmp in (old, fresh):
        tmp.write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    build(tmp_path / "c.h5", samples)
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a live run
