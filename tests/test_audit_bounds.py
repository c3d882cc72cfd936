"""The audit's statistics against closed forms and an independent accountant (dp-accounting)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fl_dp.audit_bounds import (
    approximate_dp_inverse_tradeoff,
    best_one_run_bound,
    clopper_pearson_epsilon,
    gaussian_inverse_tradeoff,
    gdp_epsilon,
    guesses_from_scores,
    one_run_epsilon,
    one_run_fdp_epsilon,
    one_run_fdp_rejects,
    one_run_gdp_mu,
    one_run_p_value,
)


def test_all_right_without_delta_matches_the_closed_form():
    # P[Binomial(r, p) = r] = p^r = 0.05  <=>  eps = logit(0.05^(1/r))
    for r in (10, 100, 1000):
        p = 0.05 ** (1 / r)
        assert one_run_epsilon(r, r, r, 0.0) == pytest.approx(math.log(p / (1 - p)), abs=1e-6)


def test_delta_only_weakens_the_bound():
    for correct in (60, 80, 100):
        without = one_run_epsilon(1000, 100, correct, 0.0)
        with_delta = one_run_epsilon(1000, 100, correct, 1e-5)
        assert with_delta <= without + 1e-9
    assert one_run_p_value(1000, 100, 90, 1.0, 1e-3) > one_run_p_value(1000, 100, 90, 1.0, 0.0)


def test_chance_level_guessing_gives_no_bound():
    assert one_run_epsilon(1000, 200, 100, 1e-5) == 0.0
    assert one_run_fdp_epsilon(1000, 200, 100, 1e-5) == 0.0
    assert one_run_gdp_mu(1000, 200, 100) == 0.0


def test_gdp_epsilon_matches_dp_accounting():
    pld = pytest.importorskip("dp_accounting.pld.privacy_loss_distribution")
    for mu in (0.5, 1.0, 2.0):
        reference = pld.from_gaussian_mechanism(standard_deviation=1 / mu, sensitivity=1.0, value_discretization_interval=1e-4)
        assert gdp_epsilon(mu, 1e-5) == pytest.approx(reference.get_epsilon_for_delta(1e-5), rel=1e-3)


def test_tradeoff_curves():
    # G_0 is no privacy loss at all: f(1 - x) = x; (0, 0)-DP likewise
    for x in (0.01, 0.3, 0.9):
        assert gaussian_inverse_tradeoff(0.0)(x) == pytest.approx(x)
        assert approximate_dp_inverse_tradeoff(0.0, 0.0)(x) == pytest.approx(x)
    # a larger mu or epsilon lets an adversary do better: lower type II error at the same type I
    assert gaussian_inverse_tradeoff(2.0)(0.5) < gaussian_inverse_tradeoff(1.0)(0.5)
    assert approximate_dp_inverse_tradeoff(2.0, 0.0)(0.5) < approximate_dp_inverse_tradeoff(1.0, 0.0)(0.5)


def test_fdp_rejection_is_monotone_in_mu():
    verdicts = [one_run_fdp_rejects(gaussian_inverse_tradeoff(mu), 1000, 100, 95) for mu in np.linspace(0, 6, 25)]
    assert verdicts[0] and not verdicts[-1]
    assert verdicts == sorted(verdicts, reverse=True)


def test_fdp_analysis_is_at_least_as_tight_as_steinke_on_approximate_dp():
    for guesses, correct in ((100, 90), (200, 190), (500, 420)):
        steinke = one_run_epsilon(1000, guesses, correct, 1e-5)
        fdp = one_run_fdp_epsilon(1000, guesses, correct, 1e-5)
        assert fdp >= steinke - 0.05


def test_clopper_pearson_zero_errors_closed_form():
    # no error in n trials each side: the one-sided upper limit is 1 - (level)^(1/n)
    n, delta = 200, 1e-5
    upper = 1 - 0.025 ** (1 / n)
    assert clopper_pearson_epsilon(0, n, 0, n, delta) == pytest.approx(math.log((1 - delta - upper) / upper), rel=1e-6)
    assert clopper_pearson_epsilon(n // 2, n, n // 2, n, delta) == 0.0


def test_guesses_from_scores_counts_both_tails():
    scores = [0.0, 1.0, 2.0, 3.0]
    members = [False, True, False, True]
    assert guesses_from_scores(scores, members, 2) == 2  # top (3: in) and bottom (0: out)
    assert guesses_from_scores(scores, members, 2, two_sided=False) == 1  # 3: in, 2: wrong
    assert guesses_from_scores(scores, members, 4) == 2


def _gaussian_scores(mu: float, canaries: int, seed: int) -> tuple[list[float], list[bool]]:
    rng = np.random.default_rng(seed)
    members = rng.random(canaries) < 0.5
    return list(np.where(members, mu, 0.0) + rng.standard_normal(canaries)), list(members)


@pytest.mark.parametrize("seed", range(4))
def test_ideal_gaussian_is_never_overstated(seed):
    mu = 1.0
    bound = best_one_run_bound(*_gaussian_scores(mu, 2000, seed), delta=1e-5)
    assert bound.gdp_epsilon <= gdp_epsilon(mu, 1e-5)
    assert bound.epsilon <= gdp_epsilon(mu, 1e-5)


def test_ideal_gaussian_at_eps_8_is_audited_to_about_half():
    # the mu of eps = 8 at delta = 1e-5 under exact GDP accounting
    mu = 1.0
    while gdp_epsilon(mu, 1e-5) < 8:
        mu += 0.01
    bounds = [best_one_run_bound(*_gaussian_scores(mu, 4000, seed), delta=1e-5).gdp_epsilon for seed in range(3)]
    assert min(bounds) >= 0.44 * 8, bounds
