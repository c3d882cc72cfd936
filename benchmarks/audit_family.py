"""The one-run f-DP audit against the mechanism's own trade-off curves instead of Gaussian ones.

Mahloujifar, Melis and Chaudhuri (ICML 2025) test the canaries' guesses against "the hypothesized
f-DP curve of the mechanism". ``fl_dp.audit_bounds`` uses the Gaussian curves G_mu, exact for a
composed Gaussian mechanism and, by the central limit theorem, close for a subsampled one over
many rounds. This module tests against the curves of the run's own mechanism family instead:
``rounds`` Poisson-subsampled Gaussian releases at the run's rate q, indexed by the noise
multiplier (dp-accounting's privacy loss distributions, add-or-remove neighbours). The bound is
the epsilon at delta of the least noise whose curve the guesses reject.

It answers one question of docs/privacy_audit.md: whether the audit of ``central`` at q = 0.1 stays
below half the ledger because Gaussian curves misdescribe a subsampled mechanism (they do not:
the two bounds differ by at most 0.2 on the same scores, docs/privacy_audit.md). dp-accounting is a test
dependency, so this lives with the benchmarks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from fl_dp.audit_bounds import guess_grid, guesses_from_scores, one_run_fdp_rejects

#: the epsilons at which a curve's privacy profile delta(epsilon) is read (the curve is the upper
#: envelope of the (epsilon, delta(epsilon)) curves on this grid: at or below the true one)
PROFILE_EPSILONS = np.linspace(0.0, 40.0, 4001)
#: the PLD's loss grid; finer changes the bounds by less than 0.01 here
DISCRETIZATION = 1e-3


@functools.lru_cache(maxsize=256)
def _composed_pld(noise_multiplier: float, sample_rate: float, rounds: int, pessimistic: bool):  # type: ignore[no-untyped-def]
    from dp_accounting.pld import privacy_loss_distribution

    single = privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sampling_prob=sample_rate,
        pessimistic_estimate=pessimistic,
        # the connect-the-dots discretisation only exists as a pessimistic estimate
        use_connect_dots=pessimistic,
        value_discretization_interval=DISCRETIZATION,
    )
    return single.self_compose(rounds)


@functools.lru_cache(maxsize=256)
def _privacy_profile(noise_multiplier: float, sample_rate: float, rounds: int) -> np.ndarray:
    """delta(epsilon) on :data:`PROFILE_EPSILONS` (pessimistic); read once per noise level, as the
    bisections of every number of guesses try the same noise levels."""
    pld = _composed_pld(noise_multiplier, sample_rate, rounds, True)
    return np.asarray(pld.get_delta_for_epsilon(PROFILE_EPSILONS))


def subsampled_gaussian_inverse_tradeoff(noise_multiplier: float, sample_rate: float, rounds: int) -> Callable[[float], float]:
    """x -> f(1 - x), f the trade-off curve of ``rounds`` Poisson-subsampled Gaussian releases.

    f(a) = sup_eps max(0, 1 - delta(eps) - e^eps a, e^-eps (1 - delta(eps) - a)) (Dong, Roth and Su
    2022, Proposition 2.12) from the pessimistic PLD's delta(eps) on :data:`PROFILE_EPSILONS`: a
    curve at or below the mechanism's, so that rejecting it rejects the mechanism.
    """
    keep = 1 - _privacy_profile(noise_multiplier, sample_rate, rounds)
    grow, shrink = np.exp(PROFILE_EPSILONS), np.exp(-PROFILE_EPSILONS)

    def inverse(x: float) -> float:
        alpha = 1 - x
        return max(0.0, float(np.max(keep - grow * alpha)), float(np.max(shrink * (keep - alpha))))

    return inverse


def subsampled_gaussian_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """epsilon at ``delta`` of the composed mechanism (the optimistic PLD: a lower bound's side)."""
    return float(_composed_pld(noise_multiplier, sample_rate, rounds, False).get_epsilon_for_delta(delta))


def family_epsilon_lower_bound(
    scores: Sequence[float],
    members: Sequence[bool],
    *,
    noise_multiplier: float,
    sample_rate: float,
    rounds: int,
    delta: float,
    confidence: float = 0.95,
    two_sided: bool = False,
    steps: int = 12,
) -> float:
    """The one-run bound against the composed subsampled Gaussian curves, over the same guess grid
    and union bound as :func:`fl_dp.audit_bounds.best_one_run_bound`.

    For each number of guesses, the least noise multiplier rejected is bracketed by bisection (in
    log scale) between ``noise_multiplier / 8`` and ``8 * noise_multiplier``; the bound is the
    epsilon of the rejected end of the bracket.
    """
    canaries = len(scores)
    grid = guess_grid(canaries)
    level = (1 - confidence) / len(grid)
    best = 0.0
    for guesses in grid:
        correct = guesses_from_scores(scores, members, guesses, two_sided)

        def rejects(noise: float, guesses: int = guesses, correct: int = correct) -> bool:
            curve = subsampled_gaussian_inverse_tradeoff(noise, sample_rate, rounds)
            return one_run_fdp_rejects(curve, canaries, guesses, correct, 1 - level)

        lo, hi = noise_multiplier / 8, noise_multiplier * 8
        if not rejects(hi):
            continue
        if rejects(lo):
            hi = lo
        else:
            for _ in range(steps):
                mid = math.sqrt(lo * hi)
                lo, hi = (lo, mid) if rejects(mid) else (mid, hi)
        best = max(best, subsampled_gaussian_epsilon(hi, sample_rate, rounds, delta))
    return best
