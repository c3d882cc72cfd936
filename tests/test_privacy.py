import math

import dp_accounting
import pytest
from opacus.accountants import RDPAccountant

from fl_dp.privacy import PrivacyLedger, Release, calibrate_noise_multiplier, epsilon_of

CASES = [(1.0, 0.01, 1000), (0.8, 0.05, 300), (2.0, 1.0, 20), (1.3, 0.2, 50), (5.0, 1.0, 100)]


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta=delta)


def _google_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    # Opacus' default orders, so both convert RDP to (eps, delta) on the same grid
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    accountant = dp_accounting.rdp.RdpAccountant(orders)
    accountant.compose(event)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("sigma, q, steps", CASES)
def test_ledger_matches_opacus_stepping_and_google_dp_accounting(sigma, q, steps):
    delta = 1e-5
    ours = epsilon_of([Release(sigma, q, steps)], delta)
    assert ours == pytest.approx(_opacus_epsilon(sigma, q, steps, delta), rel=1e-9)
    # same RDP orders and conversion; the two independent implementations evaluate the
    # subsampled-Gaussian RDP at fractional orders differently, by well under 1%
    assert ours == pytest.approx(_google_epsilon(sigma, q, steps, delta), rel=1e-2)


@pytest.mark.parametrize("sigma, q, steps", [(3.0, 0.25, 50), (10.0, 1.0, 5), (2.5, 0.1, 100)])
def test_a_large_delta_gives_the_reference_epsilon_never_a_negative_one(sigma, q, steps):
    """Opacus' conversion gives -0.35 for the first case at delta 0.5; dp-accounting gives 0."""
    reference = _google_epsilon(sigma, q, steps, 0.5)
    assert epsilon_of([Release(sigma, q, steps)], 0.5) == pytest.approx(reference, abs=1e-3)
    assert epsilon_of([Release(sigma, q, steps, skellam_l2=1.0, skellam_l1=1.0)], 0.5) >= 0.0


def _direct_rdp(q: float, sigma: float, order: float) -> float:
    """RDP of the Poisson-subsampled Gaussian at ``order`` by numerical integration of its definition,
    log E_{z ~ N(0, sigma^2)}[((1 - q) + q exp((2z - 1) / (2 sigma^2)))^order] / (order - 1)
    (Mironov, Talwar and Zhang 2019: this direction is the larger one), sharing no code with either library."""
    from scipy import integrate
    from scipy.stats import norm

    def integrand(z):
        return norm.pdf(z, 0, sigma) * ((1 - q) + q * math.exp((2 * z - 1) / (2 * sigma**2))) ** order

    # the integrand's mass lies within a few sigma of 0 and of order (its tilted mean): cut the range there
    lower, upper = -40 * sigma, 40 * sigma + order + 1
    total, _ = integrate.quad(integrand, lower, upper, points=[0.0, 0.5, order], limit=1000, epsabs=0, epsrel=1e-11)
    return math.log(total) / (order - 1)


@pytest.mark.parametrize(
    "q, sigma, order", [(0.0952, 0.66, 1.7), (0.0422, 0.3525, 1.5), (0.1, 1.0, 2.5), (0.01, 0.8, 6.3), (0.375, 3.66, 3.0)]
)
def test_rdp_at_fractional_orders_is_the_integral_of_its_definition(q, sigma, order):
    """Where Opacus and dp-accounting part at fractional orders (up to 3% in epsilon at large
    epsilons: dp-accounting adds the absolute values of an alternating series, an upper bound),
    the integral says Opacus' value, which the ledger uses, is the exact one."""
    from fl_dp.skellam import opacus_rdp

    ours = float(opacus_rdp().compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[order])[0])
    assert ours == pytest.approx(_direct_rdp(q, sigma, order), rel=1e-7)
    reference = float(dp_accounting.rdp.rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(q, sigma, [order])[0])
    assert reference >= ours * (1 - 1e-9)


def test_known_value_from_facts():
    assert epsilon_of([Release(1.0, 0.01, 1000)], 1e-5) == pytest.approx(2.1014, abs=1e-3)


def test_ledger_composes_each_clients_own_rounds():
    ledger = PrivacyLedger(delta=1e-5)
    for _ in range(5):
        ledger.record("a", Release(2.0))
    ledger.record("b", Release(2.0))
    assert ledger.epsilon("a") == pytest.approx(epsilon_of([Release(2.0, 1.0, 5)], 1e-5))
    assert ledger.epsilon("b") < ledger.epsilon("a")
    eps_max, eps_mean = ledger.summary()
    assert eps_max == ledger.epsilon("a")
    assert eps_mean == pytest.approx((ledger.epsilon("a") + ledger.epsilon("b")) / 2)
    assert ledger.epsilon("never-sampled") == 0.0
    assert ledger.releases("a") == [Release(2.0, 1.0, 5)]  # merged, as Opacus merges its history
    ledger.record("a", Release(1.0, 0.5, 3))
    assert ledger.releases("a") == [Release(2.0, 1.0, 5), Release(1.0, 0.5, 3)]
    assert ledger.epsilon("a") == pytest.approx(epsilon_of([Release(2.0, 1.0, 5), Release(1.0, 0.5, 3)], 1e-5))


def test_noiseless_release_has_no_privacy():
    assert math.isinf(epsilon_of([Release(1.0), Release(0.0)], 1e-5))


@pytest.mark.parametrize(
    "target, q, steps", [(3.0, 0.01, 1000), (1.0, 1.0, 20), (8.0, 1.0, 50), (0.1, 0.01, 100), (0.01, 0.001, 10)]
)
def test_calibration_reaches_the_target(target, q, steps):
    sigma = calibrate_noise_multiplier(target, 1e-5, q, steps)
    assert epsilon_of([Release(sigma, q, steps)], 1e-5) <= target
    assert epsilon_of([Release(sigma * 0.97, q, steps)], 1e-5) > target
    # no more noise than the target needs: within half a percent of it, small targets too
    assert epsilon_of([Release(sigma, q, steps)], 1e-5) >= 0.995 * target


@pytest.mark.parametrize(
    "target, delta, q, steps", [(8.0, 1e-5, 0.1, 100), (1.0, 1e-5, 0.1, 100), (3.0, 1e-6, 0.01, 1000), (2.0, 1e-5, 1.0, 30)]
)
def test_calibration_from_epsilon_1_up_is_opacus_own_to_the_bit(target, delta, q, steps):
    """The search is Opacus' (the documented runs' noise multipliers stay what they were)."""
    from opacus.accountants.utils import get_noise_multiplier

    expected = get_noise_multiplier(
        target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps, accountant="rdp", epsilon_tolerance=0.005
    )
    assert calibrate_noise_multiplier(target, delta, q, steps) == expected


def test_the_orders_are_opacus_defaults_then_larger_ones():
    from fl_dp.privacy import OPACUS_ORDERS, ORDERS

    assert list(OPACUS_ORDERS) == RDPAccountant.DEFAULT_ALPHAS
    assert list(ORDERS[: len(RDPAccountant.DEFAULT_ALPHAS)]) == RDPAccountant.DEFAULT_ALPHAS
    assert min(ORDERS[len(RDPAccountant.DEFAULT_ALPHAS) :]) > max(RDPAccountant.DEFAULT_ALPHAS)


def test_a_small_epsilon_is_reached_with_the_noise_it_needs():
    """At Opacus' largest default order (63) no epsilon fell below about 0.1 at delta 1e-5: a target
    of 0.05 was refused as needing sigma above 1000; sigma 10 at q 0.01 over 100 steps is 0.032, not 0.106."""
    assert epsilon_of([Release(10.0, 0.01, 100)], 1e-5) == pytest.approx(0.031987, abs=1e-5)
    sigma = calibrate_noise_multiplier(0.05, 1e-5, 0.25, 50)
    assert 0.995 * 0.05 <= epsilon_of([Release(sigma, 0.25, 50)], 1e-5) <= 0.05 and sigma < 300


@pytest.mark.parametrize("q, steps", [(1e-3, 1), (0.1, 300), (1.0, 100_000)])
def test_calibration_ends_at_the_largest_target_and_refuses_beyond_it(q, steps):
    from fl_dp.privacy import MAX_TARGET_EPSILON

    # from about 1e16 on Opacus' search, with its absolute tolerance, never ends
    sigma = calibrate_noise_multiplier.__wrapped__(MAX_TARGET_EPSILON, 1e-5, q, steps)
    assert 0 < epsilon_of([Release(sigma, q, steps)], 1e-5) <= MAX_TARGET_EPSILON
    with pytest.raises(ValueError, match="target epsilon must be in"):
        calibrate_noise_multiplier.__wrapped__(1e16, 1e-5, q, steps)


def test_calibration_matches_facts():
    assert calibrate_noise_multiplier(3.0, 1e-5, 0.01, 1000) == pytest.approx(0.8655, abs=0.005)


@pytest.mark.parametrize(
    "kwargs",
    [dict(noise_multiplier=-1), dict(noise_multiplier=1, sample_rate=0), dict(noise_multiplier=1, steps=0), dict(noise_multiplier=1e-300), dict(noise_multiplier=1e300), dict(noise_multiplier=2e6)],
)
def test_bad_releases_are_refused(kwargs):
    with pytest.raises(ValueError):
        Release(**kwargs)


@pytest.mark.parametrize("q", [1e-6, 1e-3, 1.0])
def test_the_smallest_noise_costs_more_than_the_largest_target_and_every_calibration_stays_above_it(q):
    from fl_dp.privacy import MAX_TARGET_EPSILON, MIN_NOISE_MULTIPLIER, analytic_gaussian_noise_multiplier

    # below the floor a release is refused; at it, one release already spends past any target
    assert epsilon_of([Release(MIN_NOISE_MULTIPLIER, q, 1)], 1e-5) > 5e7 > MAX_TARGET_EPSILON
    assert calibrate_noise_multiplier.__wrapped__(MAX_TARGET_EPSILON, 1e-5, q, 1) > MIN_NOISE_MULTIPLIER
    assert analytic_gaussian_noise_multiplier(MAX_TARGET_EPSILON, 1e-5) > MIN_NOISE_MULTIPLIER


def test_the_largest_accounted_noise_is_above_every_calibration_and_accounts_without_overflow():
    """Above 1e154 Opacus' RDP squared sigma past a double (a forged ledger row of 1e300 crashed a
    resume with OverflowError); a release is capped far above what any run adds."""
    from fl_dp.privacy import MAX_ACCOUNTED_NOISE, MAX_NOISE_MULTIPLIER

    assert MAX_ACCOUNTED_NOISE >= 2 * MAX_NOISE_MULTIPLIER  # the calibrations probe up to twice the largest
    for q in (1e-6, 1e-3, 1.0):
        assert 0 <= epsilon_of([Release(MAX_ACCOUNTED_NOISE, q, 10**6)], 1e-5) < 0.01


def test_calibration_does_not_pass_on_the_warnings_of_opacus_search():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Opacus warns at the large noise its search tries on the way
        sigma = calibrate_noise_multiplier.__wrapped__(8.0, 1e-5, 0.1, 100)
    assert 0.9 < sigma < 1.1


def test_opacus_is_imported_without_a_root_log_handler():
    """opacus' import calls logging.basicConfig; without undoing it, Flower's DEBUG lines of every
    SecAgg+ stage reached each Ray actor's stderr, and so the console."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from fl_dp.privacy import Release, calibrate_noise_multiplier, epsilon_of\n"
        "epsilon_of([Release(1.0, 0.1, 10)], 1e-5); calibrate_noise_multiplier(4.0, 1e-5, 0.1, 10)\n"
        "assert 'opacus' in __import__('sys').modules\n"
        "logging.getLogger('flwr').propagate = True\n"
        "logging.getLogger('flwr').debug('a flower debug line')\n"
        "print(len(logging.getLogger().handlers))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0" and "a flower debug line" not in done.stderr
