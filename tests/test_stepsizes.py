import math

import pytest
import torch

from fl_dp.stepsizes import ef21_logistic_constants, ef21_stepsize, logistic_smoothness
from fl_dp.training import nonconvex_regularizer


def test_ef21_stepsize_formula_and_limits():
    # alpha = 1/4: t = -1 + sqrt(4/3), theta = 1 - 0.75 (1 + t), B = 0.75 (1 + 1/t)
    t = -1 + math.sqrt(4 / 3)
    expected = 1 / (2.0 + 3.0 * math.sqrt(0.75 * (1 + 1 / t) / (1 - 0.75 * (1 + t))))
    assert ef21_stepsize(2.0, 3.0, 1, 4) == pytest.approx(expected)
    assert ef21_stepsize(2.0, 3.0, 4, 4) == 0.5
    # more compression, smaller step
    assert ef21_stepsize(1.0, 1.0, 1, 100) < ef21_stepsize(1.0, 1.0, 10, 100) < ef21_stepsize(1.0, 1.0, 50, 100)
    with pytest.raises(ValueError):
        ef21_stepsize(1.0, 1.0, 0, 10)


def test_logistic_smoothness_bounds_the_hessian_everywhere():
    torch.manual_seed(0)
    features = torch.randn(40, 5)
    labels = (torch.rand(40) > 0.5).double()
    lam = 0.1
    L = logistic_smoothness(features, lam)

    def loss(w):
        logits = features.double() @ w[:5] + w[5]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) + nonconvex_regularizer(w, lam)

    for _ in range(20):
        w = torch.randn(6, dtype=torch.float64) * 3
        hessian = torch.autograd.functional.hessian(loss, w)
        assert torch.linalg.eigvalsh(hessian).abs().max() <= L + 1e-9


def test_global_constants_are_between_local_ones():
    features = [torch.randn(30, 4) * s for s in (0.5, 1.0, 2.0)]
    L, L_tilde = ef21_logistic_constants(features, 0.1)
    local = [logistic_smoothness(x, 0.1) for x in features]
    assert L <= max(local) + 1e-9 and min(local) <= L_tilde <= max(local)
