"""The analysis helpers of benchmarks/feature_probe.py, which the README's teacher figures come from."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_ridge_probe_finds_an_informative_feature_and_not_noise():
    probe = load_script("feature_probe")
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.uniform(0, 1, n)
        informative = np.stack([y + 0.1 * rng.normal(size=n), rng.normal(size=n)], 1)
        return informative, rng.normal(size=(n, 2)), y

    (train_i, train_n, y), (val_i, val_n, y_val), (test_i, test_n, y_test) = split(400), split(200), split(200)
    val, test = probe.ridge_probe(train_i, y, val_i, y_val, test_i, y_test)
    assert val > 0.9 and test > 0.9
    val, test = probe.ridge_probe(train_n, y, val_n, y_val, test_n, y_test)
    assert abs(test) < 0.2


def test_pooling_and_collection_through_hooks(toy_recipe):
    probe = load_script("feature_probe")
    maps = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    assert probe.pooled(maps).shape == (2, 3 * (3 + 5))
    assert probe.pooled(torch.rand(2, 7)) is None  # not a map: nothing to probe

    from conftest import ToyTeacher

    teacher = ToyTeacher().eval()
    batches = [{"image": torch.rand(4, 3, 16, 16), "mos": torch.rand(4)} for _ in range(3)]
    feats, mos = probe.collect(teacher, batches, ["body.0", "no.such.module"], limit=6)
    assert mos.shape == (8,)  # stops after the batch that reaches the limit
    assert feats["module:body.0"].shape == (8, 3 * 8) and feats["quality_map"].shape == (8, 3 * 4)
