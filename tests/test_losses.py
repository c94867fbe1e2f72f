"""Each registered loss against a computation done by hand on tiny tensors."""
import math

import pytest
import torch

from kdiqa.losses import WeightedLoss
from kdiqa.registry import LOSSES

P = torch.tensor([0.2, 0.5, 0.9])
T = torch.tensor([0.3, 0.4, 1.0])


def test_mse_l1_smooth_l1_by_hand():
    assert LOSSES.build("mse")(P, T).item() == pytest.approx((0.01 + 0.01 + 0.01) / 3)
    assert LOSSES.build("l1")(P, T).item() == pytest.approx(0.1)
    # every |diff| = 0.1 <= beta = 0.2: quadratic branch 0.5 * d^2 / beta
    assert LOSSES.build("smooth_l1", beta=0.2)(P, T).item() == pytest.approx(0.5 * 0.01 / 0.2)
    # beta = 0.05 < 0.1: linear branch |d| - beta / 2
    assert LOSSES.build("smooth_l1", beta=0.05)(P, T).item() == pytest.approx(0.1 - 0.025)


def test_margin_ranking_by_hand():
    pred = torch.tensor([0.1, 0.3, 0.2])
    target = torch.tensor([0.0, 1.0, 2.0])  # true order 0 < 1 < 2; pred swaps items 1 and 2
    # ordered pairs (i, j) with target_i != target_j: 6; hinge max(0, margin - sign * (p_i - p_j))
    terms = []
    for i in range(3):
        for j in range(3):
            if i != j:
                sign = math.copysign(1, float(target[i] - target[j]))
                terms.append(max(0.0, 0.05 - sign * float(pred[i] - pred[j])))
    assert LOSSES.build("margin_ranking", margin=0.05)(pred, target).item() == pytest.approx(sum(terms) / 6)
    assert LOSSES.build("margin_ranking")(torch.ones(3), torch.ones(3)).item() == 0.0  # no ordered pair


def test_plcc_loss_by_hand():
    loss = LOSSES.build("plcc")
    assert loss(T * 3 + 1, T).item() == pytest.approx(0.0, abs=1e-6)  # perfectly linear
    assert loss(-T, T).item() == pytest.approx(1.0, abs=1e-6)  # perfectly anti-correlated
    p, t = P - P.mean(), T - T.mean()
    r = float((p * t).sum() / (p.norm() * t.norm()))
    assert loss(P, T).item() == pytest.approx((1 - r) / 2, abs=1e-6)


def test_cosine_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]]).reshape(2, 2, 1, 1)
    assert LOSSES.build("cosine")(a, b).item() == pytest.approx(((1 - 0) + (1 - 1)) / 2)


def test_emd_and_kl_by_hand():
    p = torch.tensor([[1.0, 0.0, 0.0]])
    q = torch.tensor([[0.0, 0.0, 1.0]])
    # CDFs [1, 1, 1] vs [0, 0, 1]: |diff| = [1, 1, 0]; r = 2: sqrt(mean(diff^2)) = sqrt(2/3)
    assert LOSSES.build("emd")(p, q).item() == pytest.approx(math.sqrt(2 / 3), abs=1e-5)
    assert LOSSES.build("emd", r=1)(p, q).item() == pytest.approx(2 / 3, abs=1e-5)
    pred = torch.tensor([[0.5, 0.5]])
    target = torch.tensor([[0.25, 0.75]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert LOSSES.build("kl")(pred, target).item() == pytest.approx(kl, abs=1e-6)


def test_weighted_sum_keeps_every_part():
    loss = WeightedLoss([("mse", 2.0, {}), ("l1", 0.5, {}), ("mse", 1.0, {})])
    total, parts = loss(P, T)
    assert set(parts) == {"mse0", "l1", "mse2"}
    assert total.item() == pytest.approx(2 * 0.01 + 0.5 * 0.1 + 0.01)
