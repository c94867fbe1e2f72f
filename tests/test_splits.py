"""Split policies: official kept, random seeded and repeatable, groups never divided."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from kdiqa.data.sample import IQASample, LoadedDataset
from kdiqa.data.splits import assign_splits, split_summary
from kdiqa.errors import ConfigError, DataError


def dataset(n: int = 100, *, group_size: int = 0, splits=None, name: str = "fake") -> LoadedDataset:
    samples = [
        IQASample(
            path=f"/data/{i}.png",
            mos=i / max(n - 1, 1),
            mos_raw=1 + 4 * i / max(n - 1, 1),
            group=f"ref{i // group_size}" if group_size else None,
            split=None if splits is None else splits[i],
        )
        for i in range(n)
    ]
    return LoadedDataset(name=name, samples=samples, mos_range=(1, 5), has_official_split=splits is not None)


def split_of(samples):
    return [s.split for s in samples]


def test_random_split_is_deterministic_for_a_seed_and_follows_ratios():
    ds = dataset()
    first = assign_splits(ds, seed=3, policy="random")
    again = assign_splits(ds, seed=3, policy="random")
    assert split_of(first) == split_of(again)
    assert Counter(split_of(first)) == {"train": 70, "val": 10, "test": 20}
    assert [s.path for s in first] == [s.path for s in ds.samples]  # order kept
    assert all(dataclasses.replace(a, split=None) == b for a, b in zip(first, ds.samples, strict=True))
    assert split_of(assign_splits(ds, seed=4, policy="random")) != split_of(first)


def test_repeats_differ_but_each_is_repeatable():
    ds = dataset()
    runs = [split_of(assign_splits(ds, seed=0, repeat=k, policy="random")) for k in range(5)]
    assert len({tuple(r) for r in runs}) == 5
    assert split_of(assign_splits(ds, seed=0, repeat=2, policy="random")) == runs[2]
    tests = [{i for i, s in enumerate(r) if s == "test"} for r in runs]
    assert tests[0] != tests[1] and all(len(t) == 20 for t in tests)


def test_groups_never_leak_between_splits():
    ds = dataset(125, group_size=5)  # 25 reference images x 5 distorted versions
    for repeat in range(10):
        samples = assign_splits(ds, seed=1, repeat=repeat, ratios=(0.6, 0.2, 0.2), policy="random")
        by_group: dict[str, set[str]] = {}
        for s in samples:
            by_group.setdefault(s.group, set()).add(s.split)
        assert all(len(splits) == 1 for splits in by_group.values())
        assert Counter(split_of(samples)) == {"train": 75, "val": 25, "test": 25}


def test_ungrouped_samples_mix_with_groups():
    ds = dataset(40, group_size=10)
    ds.samples[0:10] = [dataclasses.replace(s, group=None) for s in ds.samples[0:10]]
    samples = assign_splits(ds, seed=0, ratios=(0.5, 0.25, 0.25), policy="random")
    for group in ("ref1", "ref2", "ref3"):
        assert len({s.split for s in samples if s.group == group}) == 1
    assert len(samples) == 40


def test_val_ratio_zero_gives_no_validation():
    samples = assign_splits(dataset(50), ratios=(0.8, 0.0, 0.2), policy="random")
    assert Counter(split_of(samples)) == {"train": 40, "test": 10}


def test_policy_and_argument_validation():  # policy, ratios, seed and repeat values: test_config.py
    ds = dataset(10)
    with pytest.raises(ConfigError, match="has no official split"):
        assign_splits(ds, policy="official")


def test_official_split_is_kept_and_auto_prefers_it():
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    ds = dataset(10, splits=splits)
    assert split_of(assign_splits(ds, policy="official")) == splits
    assert split_of(assign_splits(ds, policy="auto", repeat=3)) == splits
    assert split_of(assign_splits(ds, policy="random")) != splits
    assert Counter(split_of(assign_splits(dataset(10), policy="auto"))) == {"train": 7, "val": 1, "test": 2}


def test_official_split_without_val_carves_it_from_train_by_group():
    splits = ["train"] * 80 + ["test"] * 20
    ds = dataset(100, group_size=4, splits=splits)
    samples = assign_splits(ds, ratios=(0.7, 0.1, 0.2), seed=0, policy="official")
    counts = Counter(split_of(samples))
    assert counts["test"] == 20 and counts["val"] == 12 and counts["train"] == 68  # 80 * 1/8 = 10, by groups of 4
    assert [s.split for s in samples[80:]] == ["test"] * 20
    for group in {s.group for s in samples}:
        assert len({s.split for s in samples if s.group == group}) == 1
    assert split_of(assign_splits(ds, policy="official", ratios=(0.8, 0.0, 0.2))) == splits
    other = assign_splits(ds, ratios=(0.7, 0.1, 0.2), seed=0, repeat=1, policy="official")
    assert split_of(other) != split_of(samples)


def test_official_split_with_unassigned_samples_is_a_data_error():
    ds = dataset(4, splits=["train", None, "test", "test"])
    with pytest.raises(DataError, match="1 samples have no official split"):
        assign_splits(ds, policy="official")


def test_tiny_dataset_warns_about_an_empty_split():
    with pytest.warns(UserWarning, match="split 'val' is empty"):
        samples = assign_splits(dataset(3), policy="random")
    assert len(samples) == 3


def test_split_summary():
    samples = assign_splits(dataset(10), seed=0, policy="random")
    summary = split_summary(samples)
    assert summary["all"] == {"count": 10, "mos_raw_min": 1.0, "mos_raw_max": 5.0}
    assert sum(summary[name]["count"] for name in ("train", "val", "test")) == 10
    train_raw = [s.mos_raw for s in samples if s.split == "train"]
    assert summary["train"]["mos_raw_min"] == min(train_raw) and summary["train"]["mos_raw_max"] == max(train_raw)
    assert "unassigned" not in summary
    raw = split_summary(dataset(2).samples)
    assert raw["unassigned"]["count"] == 2 and raw["val"] == {"count": 0, "mos_raw_min": None, "mos_raw_max": None}
