"""Metrics against scipy, on the degenerate inputs real evaluations produce, and EMD by hand."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from kdiqa import metrics as M


@pytest.fixture
def noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 5, size=200)
    pred = 0.3 * target + rng.normal(scale=0.4, size=200)
    return pred, target


def test_correlations_match_scipy_on_random_data(noisy_pair):
    pred, target = noisy_pair
    assert M.srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0], abs=1e-12)
    assert M.krcc(pred, target) == pytest.approx(stats.kendalltau(pred, target)[0], abs=1e-12)
    assert M.plcc(pred, target) == pytest.approx(stats.pearsonr(pred, target)[0], abs=1e-12)
    assert M.rmse(pred, target) == pytest.approx(float(np.sqrt(np.mean((pred - target) ** 2))))


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(1)
    target = rng.integers(1, 6, size=80).astype(float)  # a 5-point scale: many ties
    pred = np.round(target + rng.normal(scale=1.0, size=80))
    assert M.srcc(pred, target) == pytest.approx(stats.spearmanr(pred, target)[0], abs=1e-12)
    assert M.krcc(pred, target) == pytest.approx(stats.kendalltau(pred, target)[0], abs=1e-12)  # tau-b


def test_accepts_torch_and_column_vectors(noisy_pair):
    pred, target = noisy_pair
    expected = M.srcc(pred, target)
    assert M.srcc(torch.tensor(pred, dtype=torch.float64), torch.tensor(target)) == pytest.approx(expected)
    assert M.srcc(pred.reshape(-1, 1), list(target)) == pytest.approx(expected)


def test_iqa_metrics_keys_and_values(noisy_pair):
    pred, target = noisy_pair
    out = M.iqa_metrics(pred, target)
    assert set(out) == {"srcc", "krcc", "plcc", "plcc_fitted", "rmse", "rmse_fitted", "n"}
    assert out["n"] == 200
    assert out["srcc"] == pytest.approx(M.srcc(pred, target))
    assert out["plcc"] == pytest.approx(M.plcc(pred, target))
    assert out["plcc_fitted"] == pytest.approx(M.plcc_fitted(pred, target))
    assert out["rmse_fitted"] == pytest.approx(M.rmse_fitted(pred, target))
    # the fitted mapping puts predictions on the target's scale, so its RMSE beats the raw one here
    assert out["rmse_fitted"] < out["rmse"]


def test_fitted_plcc_beats_raw_on_monotone_nonlinear_relation():
    rng = np.random.default_rng(2)
    pred = rng.uniform(-4, 4, size=300)
    target = 1.0 + 4.0 / (1.0 + np.exp(-2.0 * pred)) + rng.normal(scale=0.05, size=300)  # a sigmoid
    raw, fitted = M.plcc(pred, target), M.plcc_fitted(pred, target)
    assert fitted >= raw
    assert fitted > 0.99 and raw < 0.97
    # the logistic fit recovers the relation: residual close to the noise level
    assert M.rmse_fitted(pred, target) == pytest.approx(0.05, abs=0.02)


def test_fitted_plcc_handles_decreasing_relation():
    pred = np.linspace(0, 1, 50)
    target = 10 - 8 / (1 + np.exp(-10 * (pred - 0.5)))
    assert M.plcc(pred, target) < 0
    assert M.plcc_fitted(pred, target) > 0.999  # a decreasing logistic, mapped predictions agree with targets


@pytest.mark.parametrize("fn", [M.srcc, M.krcc, M.plcc, M.plcc_fitted, M.rmse_fitted])
def test_constant_predictions_give_nan_and_a_warning(fn):
    target = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.warns(M.MetricWarning, match=rf"{fn.__name__} is NaN: predictions are constant"):
        assert math.isnan(fn(np.full(5, 0.5), target))


def test_constant_targets_warn_in_iqa_metrics():
    with pytest.warns(M.MetricWarning, match="srcc, krcc, plcc, plcc_fitted, rmse_fitted is NaN: targets are constant"):
        out = M.iqa_metrics([1.0, 2.0, 3.0, 4.0], [3.0, 3.0, 3.0, 3.0])
    assert math.isnan(out["srcc"]) and math.isnan(out["plcc_fitted"])
    assert out["rmse"] == pytest.approx(math.sqrt((4 + 1 + 0 + 1) / 4))  # raw RMSE is still defined
    assert out["n"] == 4


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_sets_give_nan_and_a_warning(n):
    with pytest.warns(M.MetricWarning, match=f"only n={n} sample"):
        assert math.isnan(M.srcc(np.arange(n, dtype=float), np.arange(n, dtype=float)))


def test_few_points_fall_back_to_linear_fit_with_warning():
    pred, target = [1.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 5.0]
    with pytest.warns(M.MetricWarning, match="linear fit"):
        fitted = M.plcc_fitted(pred, target)
    assert fitted == pytest.approx(abs(stats.pearsonr(pred, target)[0]))


def test_no_warning_on_ordinary_data(noisy_pair):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.iqa_metrics(*noisy_pair)


def test_mismatched_lengths_raise_naming_both():
    with pytest.raises(ValueError, match="pred has 3, target has 4"):
        M.srcc([1, 2, 3], [1, 2, 3, 4])


def test_nan_input_raises():
    with pytest.raises(ValueError, match="target contains 1 NaN"):
        M.iqa_metrics([1, 2, 3], [1, float("nan"), 3])
    with pytest.raises(ValueError, match="pred must be 1-D"):
        M.plcc(np.zeros((3, 2)), np.zeros(3))


def test_emd_matches_hand_computation_on_one_hot():
    p, q = np.zeros(10), np.zeros(10)
    p[0], q[9] = 1.0, 1.0
    # CDFs differ by 1 in bins 0..8 and agree in bin 9: sqrt(9/10)
    assert M.emd(p, q) == pytest.approx(math.sqrt(0.9))
    p2, q2 = np.zeros(10), np.zeros(10)
    p2[3], q2[5] = 1.0, 1.0
    assert M.emd(p2, q2) == pytest.approx(math.sqrt(0.2))
    assert M.emd(p2, q2, r=1) == pytest.approx(0.2)
    # mean over rows
    assert M.emd(np.stack([p, p2]), np.stack([q, q2])) == pytest.approx((math.sqrt(0.9) + math.sqrt(0.2)) / 2)
    assert M.emd(p, p) == 0.0
    # vote counts are normalised
    assert M.emd(p2 * 37, q2 * 5) == pytest.approx(math.sqrt(0.2))


def test_emd_loss_matches_numpy_and_has_gradients():
    torch.manual_seed(0)
    logits = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(6, 10, dtype=torch.float64), dim=-1)
    p = torch.softmax(logits, dim=-1)
    loss = M.emd_loss(p, target)
    assert loss.item() == pytest.approx(M.emd(p.detach().numpy(), target.numpy()), abs=1e-12)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    per_row = M.emd_loss(p.detach(), target, reduction="none")
    assert per_row.shape == (6,)


def test_emd_loss_is_zero_with_finite_gradient_on_identical_rows():
    q = torch.softmax(torch.randn(3, 10), dim=-1)
    p = q.clone().requires_grad_(True)
    loss = M.emd_loss(p, q)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(p.grad).all()


def test_emd_rejects_bad_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        M.emd(np.ones(10), np.ones(5))
    with pytest.raises(ValueError, match="differ in shape"):
        M.emd_loss(torch.ones(2, 10), torch.ones(3, 10))


def test_dist_mean_and_std():
    p = np.zeros((2, 10))
    p[0, 4] = 1.0  # all votes on score 5
    p[1, [0, 9]] = 0.5  # half on 1, half on 10
    np.testing.assert_allclose(M.dist_mean(p), [5.0, 5.5])
    np.testing.assert_allclose(M.dist_std(p), [0.0, 4.5])
    t = torch.tensor(p, requires_grad=True)
    assert torch.allclose(M.dist_mean(t), torch.tensor([5.0, 5.5], dtype=torch.float64))
    M.dist_std(t).sum().backward()
    assert t.grad is not None
    votes = np.array([0, 0, 1, 2, 3, 2, 1, 0, 0, 0])  # raw AVA counts
    assert M.dist_mean(votes) == pytest.approx(5.0)


def test_binary_accuracy():
    pred = [4.0, 6.0, 5.0, 7.0]
    target = [4.5, 5.5, 4.9, 3.0]
    # sides at threshold 5 (>= is high): pred L H H H, target L H L L -> 2 of 4 agree
    assert M.binary_accuracy(pred, target, threshold=5.0) == 0.5
    assert M.binary_accuracy(pred, pred, threshold=5.0) == 1.0
