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
def test_subsampling_of_gaussian_rdp_is_dp_accountings_exact_subsampled_gaussian(rate, noise):
    orders = list(range(2, 40))
    gaussian = [math.inf, math.inf] + [a / (2 * noise**2) for a in range(2, 41)]
    exact = _compute_rdp_poisson_subsampled_gaussian(rate, noise, orders)
    ours = np.array([poisson_subsampled_rdp(a, rate, gaussian) for a in orders])
    assert np.all(ours >= exact * (1 - 1e-9))
    np.testing.assert_allclose(ours, exact, rtol=1e-7)  # the Gaussian is a symmetric pair: no slack


def test_the_pointwise_inequality_behind_the_add_direction():
    # a^(1-alpha) + u^alpha b^(1-alpha) <= a^alpha + u^(1-alpha) b^alpha for u >= 1 (fl_dp.skellam docstring)
    u = np.logspace(0, 8, 2000)
    for alpha in (1.5, 2, 3, 7, 32, 256):
        for q in (1e-4, 0.01, 0.1, 0.5, 0.9, 1.0):
            a, b = 1 - q + q * u, (1 - q) * u + q
            left = np.logaddexp((1 - alpha) * np.log(a), alpha * np.log(u) + (1 - alpha) * np.log(b))
            right = np.logaddexp(alpha * np.log(a), (1 - alpha) * np.log(u) + alpha * np.log(b))
            assert np.all(left <= right + 1e-12)


def _product_pmf_2d(variance: float, shift: tuple[int, int]):
    """Log pmfs of 2-D Skellam noise and of the same noise shifted by ``shift``, on a common grid."""
    base_1d, _ = _skellam_pmfs(variance, 0)
    width = (len(base_1d) - 1) // 2
    support = np.arange(-width, width + 1)
    first = skellam.logpmf(support - shift[0], variance / 2, variance / 2)
    second = skellam.logpmf(support - shift[1], variance / 2, variance / 2)
    return (base_1d[:, None] + base_1d[None, :]).ravel(), (first[:, None] + second[None, :]).ravel()


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_subsampled_skellam_curve_bounds_both_exact_directions_in_two_dimensions(rate):
    # a shift off the axes: the L2 and L1 sensitivities differ (5 and 7), as for a rotated message
    base, shifted = _product_pmf_2d(60.0, (3, 4))
    mixture = np.logaddexp(math.log1p(-rate) + base, math.log(rate) + shifted)
    curve = skellam_rdp_curve(math.sqrt(60.0) / 5.0, rate, 5.0, 7.0)
    for i, alpha in enumerate(ORDERS[:24]):
        remove, add = _renyi(mixture, base, alpha), _renyi(base, mixture, alpha)
        assert add <= remove * (1 + 1e-9)  # a symmetric pair: the add direction is the smaller
        assert remove <= curve[i] * (1 + 1e-9)


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
        assert curve[i] <= 1.6 * exact  # the Agarwal et al. base bound's slack, nothing from subsampling


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
