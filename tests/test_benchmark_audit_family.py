"""The audit against the mechanism's own curves (benchmarks.audit_family) on known mechanisms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.audit_family import family_epsilon_lower_bound, subsampled_gaussian_epsilon, subsampled_gaussian_inverse_tradeoff
from fl_dp.audit import _subsampled_gaussian_log_ratio
from fl_dp.audit_bounds import best_one_run_bound, gaussian_inverse_tradeoff, gdp_epsilon
from fl_dp.privacy import Release, epsilon_of


@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_without_sampling_one_release_has_the_gaussian_curve_and_epsilon(sigma):
    family, gaussian = subsampled_gaussian_inverse_tradeoff(sigma, 1.0, 1), gaussian_inverse_tradeoff(1 / sigma)
    for x in (0.01, 0.2, 0.5, 0.8, 0.99):
        # a sound curve: at or below the true one, and close to it
        assert gaussian(x) - 2e-3 <= family(x) <= gaussian(x) + 1e-9
    assert subsampled_gaussian_epsilon(sigma, 1.0, 1, 1e-5) == pytest.approx(gdp_epsilon(1 / sigma, 1e-5), abs=0.02)


def test_sampling_lowers_the_epsilon_of_the_family():
    assert subsampled_gaussian_epsilon(1.0, 0.1, 10, 1e-5) < subsampled_gaussian_epsilon(1.0, 1.0, 10, 1e-5)


def _scores(members, sigma, rate, rounds, *, included_at=None, seed=0):
    """The likelihood-ratio scores of canaries included at ``included_at`` (default: the claimed ``rate``)."""
    rng = np.random.default_rng(seed)
    sampled = (rng.random((len(members), rounds)) < (included_at or rate)) & members[:, None]
    y = torch.from_numpy(sampled + sigma * rng.standard_normal(sampled.shape))
    return _subsampled_gaussian_log_ratio(y, sigma, rate).sum(1).numpy()


def test_the_bound_stays_below_the_mechanisms_epsilon_and_catches_a_canary_included_beyond_its_sample_rate():
    members = np.random.default_rng(1).random(2000) < 0.5
    sigma, rate, rounds = 0.8, 0.2, 5
    shape = dict(noise_multiplier=sigma, sample_rate=rate, rounds=rounds, delta=1e-5)
    ledger = epsilon_of([Release(sigma, rate, rounds)], 1e-5)
    honest = family_epsilon_lower_bound(list(_scores(members, sigma, rate, rounds)), list(members), **shape)
    assert 0 < honest < subsampled_gaussian_epsilon(sigma, rate, rounds, 1e-5) < ledger
    # sampling broken: the canary is in every round while the ledger charges rate 0.2
    broken = _scores(members, sigma, rate, rounds, included_at=1.0)
    assert family_epsilon_lower_bound(list(broken), list(members), **shape) > ledger
    # the Gaussian curves, which fit this mechanism's bulk and not its tail, miss this bug
    assert best_one_run_bound(list(broken), list(members), 1e-5, two_sided=False).gdp_epsilon < ledger
