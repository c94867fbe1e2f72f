"""Train/val/test split policies: official where a dataset publishes one, else seeded random splits.

Random splits move whole groups (a sample's ``group``, e.g. KADID-10k's reference image), so no
content is seen in training and again in testing. ``repeat`` k selects the k-th of a family of
splits — each a different permutation, each reproducible — so results can be reported as the
median over N repeats, as the field does.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from kdiqa.data.sample import SPLITS, IQASample, LoadedDataset
from kdiqa.errors import ConfigError, DataError


def _rng(seed: int, repeat: int, purpose: str) -> np.random.Generator:
    # A SeedSequence of (seed, repeat, purpose) gives independent, reproducible streams per repeat.
    return np.random.default_rng([seed, repeat, sum(map(ord, purpose))])


def _group_keys(samples: Sequence[IQASample]) -> list[str | int]:
    """One key per sample: its group, or its own index when it has none (a group of one)."""
    return [s.group if s.group is not None else i for i, s in enumerate(samples)]


def _split_groups(
    samples: Sequence[IQASample], fractions: Sequence[float], names: Sequence[str], rng: np.random.Generator
) -> list[str]:
    """Shuffle the groups, then cut the shuffled sequence at the sample-count fractions.

    A group goes to the split in which the middle of its run of samples falls, so group sizes may
    shift the cut slightly but a group is never divided.
    """
    keys = _group_keys(samples)
    order: dict[str | int, list[int]] = {}
    for index, key in enumerate(keys):
        order.setdefault(key, []).append(index)
    groups = list(order.values())  # first-appearance order: deterministic before shuffling
    permutation = rng.permutation(len(groups))
    bounds = np.cumsum(fractions)
    assigned = [""] * len(samples)
    total, start = len(samples), 0
    for g in permutation:
        members = groups[g]
        middle = (start + len(members) / 2) / total
        start += len(members)
        name = names[min(int(np.searchsorted(bounds, middle, side="right")), len(names) - 1)]
        for index in members:
            assigned[index] = name
    return assigned


def _warn_empty(assigned: Sequence[str], fractions: Sequence[float], names: Sequence[str]) -> None:
    for name, fraction in zip(names, fractions, strict=True):
        if fraction > 0 and name not in assigned:
            warnings.warn(f"split {name!r} is empty: too few samples or groups for ratio {fraction:g}", stacklevel=3)


def assign_splits(
    ds: LoadedDataset,
    *,
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    repeat: int = 0,
    policy: str = "auto",
) -> list[IQASample]:
    """The dataset's samples, in their order, each with ``split`` set by ``policy``.

    ``official`` keeps the published split; when it has no validation part (TAD66K) and the val
    ratio is above 0, validation is carved from its training part by group, at val / (train + val).
    ``random`` cuts a seeded permutation of groups at ``ratios``; ``auto`` is official when
    the dataset has one, else random. The arguments come from a checked recipe (``data.split``).
    """
    fractions = tuple(float(r) for r in ratios)
    samples = list(ds.samples)
    if policy == "official" and not ds.has_official_split:
        raise ConfigError(f"dataset {ds.name!r} has no official split; use split policy 'random' or 'auto'")
    if policy == "random" or (policy == "auto" and not ds.has_official_split):
        assigned = _split_groups(samples, fractions, SPLITS, _rng(seed, repeat, "random"))
        _warn_empty(assigned, fractions, SPLITS)
        return [dataclasses.replace(s, split=name) for s, name in zip(samples, assigned, strict=True)]
    return _official(ds, samples, fractions, seed, repeat)


def _official(
    ds: LoadedDataset, samples: list[IQASample], fractions: Sequence[float], seed: int, repeat: int
) -> list[IQASample]:
    unassigned = sum(1 for s in samples if s.split not in SPLITS)
    if unassigned:
        raise DataError(f"dataset {ds.name!r}: {unassigned} samples have no official split")
    has_val = any(s.split == "val" for s in samples)
    train_ratio, val_ratio = fractions[0], fractions[1]
    if has_val or val_ratio == 0:
        return samples
    train_at = [i for i, s in enumerate(samples) if s.split == "train"]
    if not train_at:
        return samples
    val_share = val_ratio / (train_ratio + val_ratio)
    carved = _split_groups(
        [samples[i] for i in train_at], (1 - val_share, val_share), ("train", "val"), _rng(seed, repeat, "val")
    )
    _warn_empty(carved, (1 - val_share, val_share), ("train", "val"))
    result = list(samples)
    for i, name in zip(train_at, carved, strict=True):
        result[i] = dataclasses.replace(samples[i], split=name)
    return result


def split_summary(samples: Sequence[IQASample]) -> dict[str, dict[str, float | int | None]]:
    """Count and raw-MOS range overall and per split, for ``kdiqa data info``.

    Keys: ``all``, then ``train``, ``val``, ``test`` (always present, count 0 when empty), then
    ``unassigned`` only if some samples have no split yet.
    """

    def stats(items: list[IQASample]) -> dict[str, float | int | None]:
        raw = [s.mos_raw for s in items]
        return {
            "count": len(items),
            "mos_raw_min": min(raw) if raw else None,
            "mos_raw_max": max(raw) if raw else None,
        }

    summary = {"all": stats(list(samples))}
    for name in SPLITS:
        summary[name] = stats([s for s in samples if s.split == name])
    rest = [s for s in samples if s.split not in SPLITS]
    if rest:
        summary["unassigned"] = stats(rest)
    return summary
