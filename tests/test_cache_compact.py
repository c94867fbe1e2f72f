"""Compact caches (``cache.dtype: int8``) and the teacher's precision when caching (``cache.precision``).

The int8 bound tested here is the one kdiqa/cache/quantize.py states: every value comes back within
half a quantization step of its (view, channel) plane, (max − min) / 255 / 2.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ToyTeacher
from test_cache import assert_same_arrays, build, make_sampler, make_samples, read_all

from kdiqa.cache import CachedViews, CacheError, cache_info, format_cache_info, merge_shards
from kdiqa.cache.fingerprint import targets_fingerprint
from kdiqa.cache.precision import AUTOCAST_DTYPES, teacher_autocast
from kdiqa.cache.quantize import dequantize, quantize
from kdiqa.config import load_recipe
from kdiqa.config.schema import CACHE_PRECISIONS
from kdiqa.data.sample import IQASample
from kdiqa.errors import ConfigError
from kdiqa.run import RunDir
from kdiqa.stages import stage_cache
from kdiqa.stages.data import data_module
from kdiqa.stages.distill import open_cache

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def half_steps(maps: np.ndarray) -> np.ndarray:
    """Half a quantization step per (view, channel) plane, broadcastable against ``maps``."""
    planes = maps.reshape(maps.shape[0], maps.shape[1] if maps.ndim > 2 else 1, -1).astype(np.float64)
    step = (planes.max(axis=2) - planes.min(axis=2)) / 255
    return (step / 2).reshape(step.shape + (1,) * (maps.ndim - 2)) if maps.ndim > 2 else step


def within_bound(restored: np.ndarray, exact: np.ndarray) -> bool:
    """|x − x̂| ≤ half a step, plus float32 rounding of the reader's sum (1e-6 of the plane's magnitude)."""
    magnitude = np.abs(exact).reshape(exact.shape[0], -1).max(axis=1).reshape((-1,) + (1,) * (exact.ndim - 1))
    return bool((np.abs(restored.astype(np.float64) - exact) <= half_steps(exact) + 1e-6 * magnitude).all())


# ----------------------------------------------------------------------------- quantize
def test_quantize_round_trips_within_half_a_step_per_view_and_channel():
    rng = np.random.default_rng(0)
    # channels of very different ranges and offsets: each gets its own scale and zero point
    maps = rng.normal(size=(5, 3, 6, 7)) * np.array([1e-3, 1.0, 300.0])[None, :, None, None] + np.array([0, 5, -1e4])[None, :, None, None]
    maps[2, 1] = 4.25  # a constant plane comes back exactly
    maps = maps.astype(np.float32)
    codes, params = quantize(maps)
    assert codes.dtype == np.uint8 and codes.shape == maps.shape and params.shape == (5, 2, 3) and params.dtype == np.float32
    restored = np.stack([dequantize(codes[i], params[i]) for i in range(5)])
    assert restored.dtype == np.float32
    assert within_bound(restored, maps.astype(np.float64))
    assert np.array_equal(restored[2, 1], maps[2, 1])
    assert np.array_equal(restored.min(axis=(2, 3)), maps.min(axis=(2, 3)))  # a plane's minimum is its zero point
    assert codes.max() == 255 and codes.min() == 0  # the full range is used
    # a one-axis map (an embedding) is one plane per view
    vectors = rng.normal(size=(4, 9)).astype(np.float32)
    codes, params = quantize(vectors)
    assert params.shape == (4, 2, 1)
    assert within_bound(np.stack([dequantize(codes[i], params[i]) for i in range(4)]), vectors.astype(np.float64))


def test_rows_without_targets_quantize_to_nan():
    maps = np.ones((2, 2, 3, 3), dtype=np.float32)
    maps[1] = np.nan  # the row of an unreadable pool image
    codes, params = quantize(maps)
    assert (codes[1] == 0).all() and np.isnan(params[1]).all()
    assert np.isnan(dequantize(codes[1], params[1])).all()
    assert np.array_equal(dequantize(codes[0], params[0]), maps[0])


# ----------------------------------------------------------------------------- int8 caches
def test_int8_cache_round_trips_within_its_stated_error(tmp_path, samples):
    build(tmp_path / "f32.h5", samples, dtype="float32")
    build(tmp_path / "i8.h5", samples, dtype="int8")
    stored = read_all(tmp_path / "i8.h5")
    exact = read_all(tmp_path / "f32.h5")
    assert stored["features/quality_map"].dtype == np.uint8 and stored["quant/quality_map"].shape == (36, 2, 8)
    assert stored["quant/embedding"].shape == (36, 2, 1)
    assert np.array_equal(stored["teacher/score"], exact["teacher/score"])  # scores and distributions stay float32
    assert np.array_equal(stored["teacher/dist"], exact["teacher/dist"])

    f32 = CachedViews(tmp_path / "f32.h5", samples, make_sampler())
    i8 = CachedViews(tmp_path / "i8.h5", samples, make_sampler())
    for row in range(len(i8)):
        a, b = f32[row]["teacher"], i8[row]["teacher"]
        for name in ("quality_map", "embedding"):
            assert b[name].dtype == torch.float32 and b[name].shape == a[name].shape
            assert within_bound(b[name].numpy()[None], a[name].numpy()[None].astype(np.float64)), (row, name)
        assert torch.equal(a["score"], b["score"])

    info = cache_info(tmp_path / "i8.h5")
    assert info["dtype"] == "int8" and info["precision"] == "fp32"
    assert info["datasets"]["features/quality_map"]["bytes_per_view"] == 8 * 4 * 4
    assert info["datasets"]["quant/quality_map"]["bytes_per_view"] == 2 * 8 * 4
    assert "int8 feature maps, teacher run in fp32" in format_cache_info(info)


def test_int8_views_of_an_unreadable_pool_image_hold_no_targets(tmp_path, samples):
    broken = tmp_path / "pool" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG not really")
    pool = [IQASample(str(broken), mos=float("nan"), mos_raw=float("nan"), split="train")]
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        build(tmp_path / "c.h5", samples + pool, dtype="int8")
    stored = read_all(tmp_path / "c.h5")
    skipped = stored["index"] == len(samples)
    assert np.isnan(stored["quant/quality_map"][skipped]).all() and np.isfinite(stored["quant/quality_map"][~skipped]).all()
    assert (stored["features/quality_map"][skipped] == 0).all()
    data = CachedViews(tmp_path / "c.h5", samples + pool, make_sampler())
    assert len(data) == 36 and data.unreadable_images == 1


def test_int8_caches_compress_and_merge_like_float_ones(tmp_path, samples):
    build(tmp_path / "i8.h5", samples, dtype="int8")
    build(tmp_path / "gz.h5", samples, dtype="int8", compression="gzip")
    assert_same_arrays(tmp_path / "i8.h5", tmp_path / "gz.h5")
    with h5py.File(tmp_path / "gz.h5", "r") as f:
        assert f["features/quality_map"].compression == "gzip" and f["features/quality_map"].shuffle
    for i in range(2):
        build(tmp_path / "m.h5", samples, dtype="int8", shard=(i, 2))
    merge_shards(tmp_path / "m.h5", progress=False)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert f["quant/quality_map"].is_virtual
    joined, single = CachedViews(tmp_path / "m.h5", samples, make_sampler()), CachedViews(tmp_path / "i8.h5", samples, make_sampler())
    for row in (0, 17, 35):
        assert torch.equal(joined[row]["teacher"]["quality_map"], single[row]["teacher"]["quality_map"])


def test_another_dtype_or_precision_refuses_the_cache_in_one_line(tmp_path, samples):
    path = tmp_path / "c.h5"
    build(path, samples, dtype="int8")
    for other in ({"dtype": "float16"}, {"dtype": "float32"}, {"precision": "bf16"}):
        with pytest.raises(CacheError, match=r"targets fingerprint differs .*precision") as caught:
            build(path, samples, **other)
        assert "\n" not in str(caught.value)
    build(tmp_path / "f16.h5", samples)
    with pytest.raises(CacheError, match="targets fingerprint differs"):
        build(tmp_path / "f16.h5", samples, dtype="int8")


def test_fp32_keeps_the_fingerprint_caches_had_before_cache_precision():
    """Existing (fp32) caches stay valid: the digest is the one written before the precision existed."""
    covered = {"features": ["quality_map"], "pool": {}, "dtype": "float16"}
    before = hashlib.blake2b(json.dumps(covered, sort_keys=True, separators=(",", ":")).encode(), digest_size=16).hexdigest()
    assert targets_fingerprint(["quality_map"], {}, "float16") == before
    assert targets_fingerprint(["quality_map"], {}, "float16", "fp32") == before
    prints = {targets_fingerprint(["quality_map"], {}, d, p) for d in ("float16", "int8") for p in CACHE_PRECISIONS}
    assert len(prints) == 6


# ----------------------------------------------------------------------------- precision
def test_bf16_caches_on_cpu_with_other_targets(tmp_path, samples):
    build(tmp_path / "fp32.h5", samples, dtype="float32")
    build(tmp_path / "bf16.h5", samples, dtype="float32", precision="bf16")
    exact, half = read_all(tmp_path / "fp32.h5"), read_all(tmp_path / "bf16.h5")
    for key in ("teacher/score", "features/quality_map"):
        assert half[key].dtype == np.float32
        assert not np.array_equal(half[key], exact[key])  # the teacher really ran in bfloat16 ...
        assert np.allclose(half[key], exact[key], atol=0.05, rtol=0.05)  # ... and stayed close to fp32
    info = cache_info(tmp_path / "bf16.h5")
    assert info["precision"] == "bf16" and info["fingerprints"] != cache_info(tmp_path / "fp32.h5")["fingerprints"]


def test_a_precision_the_device_cannot_do_is_refused_in_one_line(monkeypatch):
    assert set(AUTOCAST_DTYPES) | {"fp32"} == set(CACHE_PRECISIONS)
    with teacher_autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with teacher_autocast(torch.device("cpu"), "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.warns(UserWarning, match="fp16 on a CPU is usually far slower"):
        teacher_autocast(torch.device("cpu"), "fp16")
    with pytest.raises(ConfigError, match=r"^cache.precision: bf16 autocast is not supported on this meta device; use"):
        teacher_autocast(torch.device("meta"), "bf16")

    def lacking(*args, **kwargs):  # what torch does for a dtype a device lacks: warn and run fp32
        warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling autocast.", stacklevel=1)

    monkeypatch.setattr(torch, "autocast", lacking)
    with pytest.raises(ConfigError, match=r"fp16 autocast is not supported on this cpu device \(In CPU autocast"):
        teacher_autocast(torch.device("cpu"), "fp16")


# ----------------------------------------------------------------------------- through a recipe
def test_recipe_options_reach_the_cache_and_its_readers(tmp_path, toy_recipe):
    with pytest.raises(ConfigError, match=r"cache.precision: 'fp8' is not one of 'fp32', 'bf16', 'fp16'"):
        load_recipe(toy_recipe, ["cache.precision=fp8"])
    base = ["cache.views_per_image=1", "cache.batch_size=16", f"teacher.checkpoint={tmp_path / 'teacher'}"]
    ToyTeacher().save_pretrained(tmp_path / "teacher")
    recipe = load_recipe(toy_recipe, [*base, "cache.dtype=int8", "cache.precision=bf16"])
    run = RunDir.of(recipe)
    stage_cache(recipe, run)
    info = cache_info(run.cache)
    assert (info["dtype"], info["precision"]) == ("int8", "bf16")
    dm = data_module(recipe)
    dm.setup()
    item = open_cache(recipe, run, dm.distill_samples())[0]  # read as distillation reads it
    assert item["teacher"]["quality_map"].dtype == torch.float32
    for other in (["cache.dtype=float16", "cache.precision=bf16"], ["cache.dtype=int8", "cache.precision=fp32"]):
        changed = load_recipe(toy_recipe, [*base, *other])
        with pytest.raises(CacheError, match="targets fingerprint differs") as caught:
            open_cache(changed, run, dm.distill_samples())
        assert "\n" not in str(caught.value)
        with pytest.raises(CacheError, match="targets fingerprint differs"):
            stage_cache(changed, run)


@pytest.fixture
def samples(tmp_path):
    return make_samples(tmp_path / "images")


# ----------------------------------------------------------------------------- the benchmark's own measurements
def test_cache_compact_benchmark_measures_sizes_and_the_int8_bound(tmp_path, samples):
    """benchmarks/cache_compact.py's helpers on a small cache: every compressed form, the stated bound."""
    spec = importlib.util.spec_from_file_location("cache_compact", BENCHMARKS / "cache_compact.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    build(tmp_path / "f32.h5", samples, dtype="float32")
    build(tmp_path / "i8.h5", samples, dtype="int8")
    sizes = bench.compressed_sizes(tmp_path / "f32.h5", 36)
    assert set(sizes) == {v[0] for v in bench.VARIANTS} and all(s["bytes"] > 0 for s in sizes.values())
    assert not list(tmp_path.glob("compressed-*"))  # the copies are removed
    error = bench.int8_error(tmp_path / "i8.h5", tmp_path / "f32.h5")
    assert 0 < error["max_abs"] and error["max_in_half_steps"] <= 1 + 1e-3
