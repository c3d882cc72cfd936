"""Lower bounds on epsilon from a membership game on canaries: the statistics of an audit.

Three analyses of the same kind of evidence (how many membership guesses were right):

- :func:`one_run_epsilon` — Steinke, Nasr and Jagielski (2023), "Privacy Auditing with One (1)
  Training Run", Theorem 3.3 with its delta term: m canaries, each in or out by a fair coin,
  r guesses (the rest abstain), v right. Under (eps, delta)-DP the number right is at most
  Binomial(r, e^eps / (1 + e^eps)) plus a delta correction; a p-value below 1 - confidence
  rejects (eps, delta)-DP.
- :func:`one_run_fdp_rejects` / :func:`one_run_gdp_epsilon` — Mahloujifar, Melis and Chaudhuri
  (ICML 2025), "Auditing f-Differential Privacy in One Run": the same game analysed against a
  whole trade-off curve f, which is tighter. With f the (eps, delta) curve it still rejects
  (eps, delta)-DP (:func:`one_run_fdp_epsilon`); with the Gaussian curve G_mu it rejects mu-GDP,
  and the report is the epsilon of that mu at delta (the paper's "empirical privacy"; a lower
  bound on epsilon for mechanisms whose trade-off curve is Gaussian, as the composed Gaussian
  mechanisms of this project are in the limit of many rounds).
- :func:`clopper_pearson_epsilon` — the classical many-run bound: false-positive and
  false-negative rates of a fixed test over independent runs, with Clopper-Pearson intervals.

Every bound holds with probability ``confidence`` over the canaries' coins (and the mechanism's
noise). Where the number of guesses is chosen after seeing the scores,
:func:`best_one_run_bound` pays for the choice with a union bound over a fixed grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats

_NORMAL = NormalDist()
#: no bound is searched above this epsilon (e^40 is beyond any count of canaries)
EPSILON_CEILING = 40.0


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def one_run_p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[at least ``correct`` right] for an (epsilon, delta)-DP mechanism (Steinke et al. 2023)."""
    _check_counts(canaries, guesses, correct)
    accuracy = 1 / (1 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, accuracy))
    if delta == 0 or correct == 0:
        return min(tail, 1.0)
    # the delta term: 2 m delta times the largest average of the pmf just below ``correct``
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, accuracy)
    slope = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return min(tail + 2 * canaries * delta * slope, 1.0)


def _largest_rejected(rejects: Callable[[float], bool], hi: float = EPSILON_CEILING, iters: int = 40) -> float:
    """The largest x in [0, hi] with rejects(x), for a predicate true below a threshold (0 if none)."""
    if not rejects(0.0):
        return 0.0
    lo = 0.0
    if rejects(hi):
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        if rejects(mid):
            lo = mid
        else:
            hi = mid
    return lo


def one_run_epsilon(canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon whose (epsilon, delta)-DP the game rejects at ``confidence``."""
    _check_confidence(confidence)
    level = 1 - confidence
    return _largest_rejected(lambda eps: one_run_p_value(canaries, guesses, correct, eps, delta) < level)


def one_run_fdp_rejects(
    inverse_tradeoff: Callable[[float], float], canaries: int, guesses: int, correct: int, confidence: float = 0.95
) -> bool:
    """Whether ``correct`` right of ``guesses`` is impossible (at ``confidence``) under f-DP.

    ``inverse_tradeoff(x)`` is f(1 - x), f the trade-off curve (type II error at type I error).
    The recursion of Mahloujifar et al. (2025, Algorithm 3, two-sided membership guesses) bounds the
    probability mass that an f-DP mechanism can put on guessing at least ``correct`` right.
    """
    _check_counts(canaries, guesses, correct)
    _check_confidence(confidence)
    if guesses == 0:
        return False
    tau = (1 - confidence) * guesses / canaries
    mass_right = tau * correct / guesses
    mass_wrong = tau * (guesses - correct) / guesses
    for i in range(correct - 1, -1, -1):
        raised = max(mass_wrong, inverse_tradeoff(mass_right))
        mass_right += i / (guesses - i) * (raised - mass_wrong)
        mass_wrong = raised
        if mass_right + mass_wrong > guesses / canaries:
            return True
    return mass_right + mass_wrong > guesses / canaries


def gaussian_inverse_tradeoff(mu: float) -> Callable[[float], float]:
    """x -> G_mu(1 - x) = Phi(Phi^-1(x) - mu)."""

    def inverse(x: float) -> float:
        if x <= 0:
            return 0.0
        if x >= 1:
            return 1.0
        return _NORMAL.cdf(_NORMAL.inv_cdf(x) - mu)

    return inverse


def approximate_dp_inverse_tradeoff(epsilon: float, delta: float) -> Callable[[float], float]:
    """x -> f(1 - x) for the (epsilon, delta)-DP curve f(a) = max(0, 1 - delta - e^eps a, e^-eps (1 - delta - a))."""
    grow = math.exp(epsilon)

    def inverse(x: float) -> float:
        return max(0.0, 1 - delta - grow * (1 - x), (x - delta) / grow)

    return inverse


def one_run_fdp_epsilon(canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon whose (epsilon, delta) trade-off curve the f-DP analysis rejects."""
    return _largest_rejected(
        lambda eps: one_run_fdp_rejects(approximate_dp_inverse_tradeoff(eps, delta), canaries, guesses, correct, confidence)
    )


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of mu-GDP (Dong, Roth and Su 2022, Corollary 2.13)."""
    if mu == 0:
        return 0.0
    return _NORMAL.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * _NORMAL.cdf(-epsilon / mu - mu / 2)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The epsilon of mu-GDP at ``delta`` (0 where mu-GDP already gives delta at epsilon 0)."""
    return _largest_rejected(lambda eps: gdp_delta(mu, eps) > delta, hi=EPSILON_CEILING * 4)


def one_run_gdp_mu(canaries: int, guesses: int, correct: int, confidence: float = 0.95) -> float:
    """The largest mu whose mu-GDP the f-DP analysis rejects."""
    return _largest_rejected(
        lambda mu: one_run_fdp_rejects(gaussian_inverse_tradeoff(mu), canaries, guesses, correct, confidence), hi=20.0
    )


def one_run_gdp_epsilon(canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """The epsilon at ``delta`` of the largest mu-GDP rejected (Mahloujifar et al.'s empirical privacy)."""
    return gdp_epsilon(one_run_gdp_mu(canaries, guesses, correct, confidence), delta)


def clopper_pearson_epsilon(
    false_positives: int, negatives: int, false_negatives: int, positives: int, delta: float, confidence: float = 0.95
) -> float:
    """Many-run bound: a fixed test's FPR and FNR over independent runs with and without the canary.

    (eps, delta)-DP forces FPR >= (1 - delta - FNR) e^-eps and FNR >= (1 - delta - FPR) e^-eps; with
    one-sided Clopper-Pearson upper limits on both rates (each at (1 + confidence) / 2) the bound is
    the larger of log((1 - delta - FNR+) / FPR+) and log((1 - delta - FPR+) / FNR+).
    """
    _check_confidence(confidence)
    if not (0 <= false_positives <= negatives and 0 <= false_negatives <= positives and negatives > 0 and positives > 0):
        raise ValueError("need 0 <= false_positives <= negatives and 0 <= false_negatives <= positives, both > 0")
    level = (1 - confidence) / 2

    def upper(failures: int, trials: int) -> float:
        return 1.0 if failures == trials else float(stats.beta.ppf(1 - level, failures + 1, trials - failures))

    fpr, fnr = upper(false_positives, negatives), upper(false_negatives, positives)
    bounds = [0.0]
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if 1 - delta - b > 0 and a > 0:
            bounds.append(math.log((1 - delta - b) / a))
    return max(bounds)


# ---------------------------------------------------------------- from scores to guesses


@dataclass(frozen=True, kw_only=True)
class OneRunBound:
    """The bounds of one audit and the guesses they came from."""

    epsilon: float  #: the (epsilon, delta) lower bound: the larger of Steinke's and the f-DP analysis'
    gdp_epsilon: float  #: epsilon at delta of the largest mu-GDP rejected
    guesses: int  #: the guesses of the best Gaussian bound
    correct: int
    canaries: int
    confidence: float


def guess_grid(canaries: int) -> list[int]:
    """Numbers of guesses tried (fixed before the scores are seen): 1, 2, 4 ... 32 percent of m."""
    return sorted({max(1, round(canaries * share)) for share in (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)})


def guesses_from_scores(scores: Sequence[float], members: Sequence[bool], guesses: int, two_sided: bool = True) -> int:
    """How many of ``guesses`` confident membership guesses are right: the top scores are called in
    (all ``guesses`` of them, or half, the bottom half then called out); the rest abstain."""
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    truth = np.asarray(members, dtype=bool)[order]
    bottom = guesses // 2 if two_sided else 0
    top = guesses - bottom
    right = int(truth[len(truth) - top :].sum()) if top else 0
    return right + (int((~truth[:bottom]).sum()) if bottom else 0)


def best_one_run_bound(
    scores: Sequence[float], members: Sequence[bool], delta: float, confidence: float = 0.95, two_sided: bool = True
) -> OneRunBound:
    """The best bound over :func:`guess_grid`, guessing on both tails (members and non-members move
    the score apart, as +u against -u) or on the top one only (a non-member leaves no trace).

    Each of the |grid| choices is tested at level (1 - confidence) / |grid| (a union bound, so that
    choosing after the fact keeps the stated confidence); the (epsilon, delta) bound splits its
    share again between Steinke et al.'s analysis and the f-DP one.
    """
    if len(scores) != len(members) or not len(scores):
        raise ValueError("need one membership bit per score, and at least one canary")
    canaries = len(scores)
    grid = guess_grid(canaries)
    level = (1 - confidence) / len(grid)
    epsilon, gdp, best = 0.0, 0.0, (0, 0)
    for guesses in grid:
        correct = guesses_from_scores(scores, members, guesses, two_sided)
        epsilon = max(
            epsilon,
            one_run_epsilon(canaries, guesses, correct, delta, 1 - level / 2),
            one_run_fdp_epsilon(canaries, guesses, correct, delta, 1 - level / 2),
        )
        this_gdp = one_run_gdp_epsilon(canaries, guesses, correct, delta, 1 - level)
        if this_gdp > gdp or best == (0, 0):
            gdp, best = max(gdp, this_gdp), (guesses, correct)
    return OneRunBound(
        epsilon=epsilon, gdp_epsilon=gdp, guesses=best[0], correct=best[1], canaries=canaries, confidence=confidence
    )
