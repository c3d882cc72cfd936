"""Skellam accounting against independent references: the exact Renyi divergence of shifted Skellam
distributions (scipy's pmf), dp-accounting's Gaussian RDP, and exact subsampled divergences."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian
from scipy.special import logsumexp
from scipy.stats import skellam

from fl_dp.privacy import Release, epsilon_of
from fl_dp.skellam import ORDERS, poisson_subsampled_rdp, skellam_rdp, skellam_rdp_curve


def _renyi(log_p: np.ndarray, log_q: np.ndarray, alpha: int) -> float:
    """D_alpha(P || Q) from log pmfs on a common support (in log space: the tails underflow)."""
    return float(logsumexp(alpha * log_p + (1 - alpha) * log_q)) / (alpha - 1)


def _skellam_pmfs(variance: float, shift: int):
    width = int(30 * math.sqrt(variance)) + 50
    support = np.arange(-width, width + 1)
    base = skellam.logpmf(support, variance / 2, variance / 2)
    return base, skellam.logpmf(support - shift, variance / 2, variance / 2)


@pytest.mark.parametrize("variance, shift", [(25.0, 1), (100.0, 3), (400.0, 10)])
@pytest.mark.parametrize("alpha", [2, 5, 16])
def test_one_dimensional_bound_holds_and_is_close_to_the_exact_divergence(variance, shift, alpha):
    base, shifted = _skellam_pmfs(variance, shift)
    exact = max(_renyi(shifted, base, alpha), _renyi(base, shifted, alpha))
    noise = math.sqrt(variance) / shift
    bound = skellam_rdp(alpha, noise, float(shift), float(shift))
    assert exact <= bound * (1 + 1e-9)
    assert bound <= 1.6 * exact  # a bound, but not a loose one


@pytest.mark.parametrize("rate, noise", [(0.1, 1.0), (0.01, 0.8), (0.3, 2.0)])
def test_subsampling_bound_is_above_the_exact_gaussian_and_its_remove_term_is_exact(rate, noise):
    orders = list(range(2, 40))
    gaussian = [math.inf, math.inf] + [a / (2 * noise**2) for a in range(2, 41)]
    exact = _compute_rdp_poisson_subsampled_gaussian(rate, noise, orders)
    ours = np.array([poisson_subsampled_rdp(a, rate, gaussian) for a in orders])
    assert np.all(ours >= exact * (1 - 1e-9))
    assert ours[0] == pytest.approx(exact[0], rel=1e-9)  # at order 2 the bound has no slack term


def test_large_sensitivity_unsampled_skellam_equals_dp_accounting_gaussian():
    # the extra Skellam term vanishes as the integer sensitivity grows: the Gaussian's epsilon remains
    accountant = dp_accounting.rdp.RdpAccountant(list(ORDERS))
    accountant.compose(dp_accounting.GaussianDpEvent(3.0), 50)
    reference = accountant.get_epsilon(1e-5)
    ours = epsilon_of([Release(3.0, 1.0, 50, 1e7, 1e7 * 1000)], 1e-5)
    assert ours == pytest.approx(reference, rel=1e-3)
    assert ours >= reference


def test_subsampled_skellam_curve_bounds_the_exact_subsampled_divergence_in_one_dimension():
    variance, shift, rate = 100.0, 5, 0.2
    base, shifted = _skellam_pmfs(variance, shift)
    mixture = np.logaddexp(math.log1p(-rate) + base, math.log(rate) + shifted)
    curve = skellam_rdp_curve(math.sqrt(variance) / shift, rate, float(shift), float(shift))
    for i, alpha in enumerate(ORDERS[:20]):
        exact = max(_renyi(mixture, base, alpha), _renyi(base, mixture, alpha))
        assert exact <= curve[i] * (1 + 1e-9)


def test_skellam_costs_more_than_the_gaussian_of_its_variance_and_ledger_rows_round_trip():
    from fl_dp.privacy import PrivacyLedger

    gaussian = epsilon_of([Release(1.2, 0.1, 100)], 1e-5)
    skellam_eps = epsilon_of([Release(1.2, 0.1, 100, 3e4, 3e4 * 181)], 1e-5)
    assert skellam_eps > gaussian
    ledger = PrivacyLedger(1e-5)
    ledger.record("a", Release(1.2, 0.1, 1, 3e4, 3e4 * 181))
    ledger.record("a", Release(1.2, 0.1, 1, 3e4, 3e4 * 181))
    ledger.record("a", Release(1.2, 0.1, 1))
    again = PrivacyLedger(1e-5)
    again.load_state_dict(ledger.state_dict())
    assert again.releases("a") == ledger.releases("a") and len(again.releases("a")) == 2
    with pytest.raises(ValueError):
        again.load_state_dict({"a": [[1.2, 0.1, 1.0, 3e4]]})
