"""Per-client privacy accounting over Opacus' RDP accountant.

Every time a client releases something noisy, it is one :class:`Release`: a
(sub-sampled) Gaussian mechanism with a noise multiplier (noise std divided by
the L2 sensitivity), a sampling rate and a number of steps, or the same for the
Skellam mechanism of ``distributed`` DP (:mod:`fl_dp.skellam`). A client's epsilon
is the RDP composition of every release it made, converted at ``delta``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fl_dp.skellam import epsilon_of_mixed, opacus_rdp


@dataclass(frozen=True)
class Release:
    """One accounted event: ``steps`` compositions of a Gaussian mechanism.

    ``noise_multiplier`` is sigma / sensitivity; 0 means no noise (no privacy).
    ``sample_rate`` is the Poisson sampling rate of the records (1 for a
    release that uses all of them, as a client-level release does).
    """

    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1
    #: Skellam instead of Gaussian noise when > 0: the integer L2 and L1 sensitivities of the
    #: scaled, rounded message (its RDP has a term in them beyond the Gaussian one)
    skellam_l2: float = 0.0
    skellam_l1: float = 0.0

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise multiplier must be finite and >= 0, got {self.noise_multiplier}")
        if 0 < self.noise_multiplier < MIN_NOISE_MULTIPLIER:
            raise ValueError(f"noise multiplier {self.noise_multiplier:g} is below {MIN_NOISE_MULTIPLIER:g}: {NOISE_BELOW_USE}")
        if self.noise_multiplier > MAX_ACCOUNTED_NOISE:
            raise ValueError(f"noise multiplier {self.noise_multiplier:g} is above {MAX_ACCOUNTED_NOISE:g}: {NOISE_ABOVE_USE}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (
            self.skellam_l2 >= 0 and math.isfinite(self.skellam_l2) and self.skellam_l1 >= 0 and math.isfinite(self.skellam_l1)
        ):
            raise ValueError(f"Skellam sensitivities must be finite and >= 0, got {self.skellam_l2}, {self.skellam_l1}")
        if (self.skellam_l2 > 0) != (self.skellam_l1 > 0):
            raise ValueError("a Skellam release has both sensitivities > 0")

    @property
    def is_skellam(self) -> bool:
        return self.skellam_l2 > 0

    def same_mechanism(self, other: Release) -> bool:
        return (self.noise_multiplier, self.sample_rate, self.skellam_l2, self.skellam_l1) == (
            other.noise_multiplier,
            other.sample_rate,
            other.skellam_l2,
            other.skellam_l1,
        )

    def with_steps(self, steps: int) -> Release:
        return Release(self.noise_multiplier, self.sample_rate, steps, self.skellam_l2, self.skellam_l1)

    def row(self) -> list[float]:
        """(noise, rate, steps) for a Gaussian release, (noise, rate, steps, l2, l1) for a Skellam one."""
        head = [self.noise_multiplier, self.sample_rate, float(self.steps)]
        return head + [self.skellam_l2, self.skellam_l1] if self.is_skellam else head


#: Opacus' default RDP orders (``RDPAccountant.DEFAULT_ALPHAS``)
OPACUS_ORDERS: tuple[float, ...] = tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(float(a) for a in range(12, 64))
#: those and larger ones, for where the best is Opacus' largest, 63: there no epsilon fell below about
#: 0.1 at delta 1e-5 whatever the noise, so a small epsilon was overcharged (sigma 10 at q 0.01 over
#: 100 steps: 0.106, against 0.032 at order 384) or refused
ORDERS: tuple[float, ...] = OPACUS_ORDERS + (
    64.0,
    80.0,
    96.0,
    128.0,
    160.0,
    192.0,
    256.0,
    384.0,
    512.0,
    768.0,
    1024.0,
    1536.0,
    2048.0,
)


def epsilon_of(releases: list[Release], delta: float) -> float:
    """(eps, delta)-DP epsilon of the RDP composition of ``releases``; inf if any is noiseless."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    return _epsilon(tuple(releases), delta)


@lru_cache(maxsize=4096)
def _epsilon(releases: tuple[Release, ...], delta: float) -> float:
    # clients sampled alike have identical histories: compose each distinct history once
    if not releases:
        return 0.0
    if any(r.noise_multiplier == 0 for r in releases):
        return math.inf
    epsilon = epsilon_of_mixed(releases, delta) if any(r.is_skellam for r in releases) else _gaussian_epsilon(releases, delta)
    # Opacus' conversion falls below 0 at a large delta (0.5: -0.35 where dp-accounting says 0);
    # no epsilon is negative
    return max(0.0, epsilon)


def _gaussian_epsilon(releases: tuple[Release, ...], delta: float) -> float:
    # Opacus' orders first; the larger ones only where the best of those is the largest (they double
    # the cost of an epsilon, and a ledger computes one per distinct client history every round)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        epsilon, order = _converted(releases, OPACUS_ORDERS, delta)
    if order == OPACUS_ORDERS[-1]:
        return _converted(releases, ORDERS, delta)[0]
    for warning in caught:  # Opacus' own warnings (an optimum at the smallest order) still reach the caller
        warnings.warn(warning.message, warning.category, stacklevel=3)
    return epsilon


def _converted(releases: tuple[Release, ...], orders: tuple[float, ...], delta: float) -> tuple[float, float]:
    """(epsilon, best order) of the composed releases: Opacus' RDP of the subsampled Gaussian at ``orders``."""
    analysis = opacus_rdp()
    rdp = sum(
        analysis.compute_rdp(q=r.sample_rate, noise_multiplier=r.noise_multiplier, steps=r.steps, orders=list(orders))
        for r in releases
    )
    epsilon, order = analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(epsilon), float(order)


#: below this noise multiplier (but for 0, no noise) one release costs epsilon above 5e7 at any
#: sample rate, more than the largest target (:data:`MAX_TARGET_EPSILON`); from about 1e-154 on,
#: sigma**2 underflows to 0 and Opacus' RDP divides by it
MIN_NOISE_MULTIPLIER = 1e-4
NOISE_BELOW_USE = "one release of it costs epsilon above 5e7, a guarantee that says nothing (0 means no noise)"

#: above this noise multiplier the noise drowns any signal the strategies send (their messages have
#: norm <= the sensitivity): a target that needs more is refused rather than run as noise
MAX_NOISE_MULTIPLIER = 1000.0

#: the largest noise multiplier a release may have: no run adds more than MAX_NOISE_MULTIPLIER (the
#: calibrations probe up to twice it), and from about 1e154 Opacus' RDP squares it past a double
MAX_ACCOUNTED_NOISE = 1e6
NOISE_ABOVE_USE = f"no run adds more than {MAX_NOISE_MULTIPLIER:g} (more noise drowns every message)"


#: above this target epsilon a guarantee says nothing (e^epsilon overflows a double from 710 on), and
#: Opacus' search, whose tolerance is absolute (0.005), never ends from about 1e16 on
MAX_TARGET_EPSILON = 1e6


def _search_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus' ``get_noise_multiplier`` search (the same start, doublings and halvings, so the same
    answer wherever the two accountants agree) over :func:`epsilon_of`'s orders, to a tolerance of
    0.005 in epsilon, or 0.5% of a target below 1: Opacus' absolute tolerance would be half of 0.01."""
    tolerance = 0.005 * min(1.0, target_epsilon)
    low, high, epsilon_high = 0.0, 10.0, math.inf
    while epsilon_high > target_epsilon:
        high *= 2
        epsilon_high = epsilon_of([Release(high, sample_rate, steps)], delta)
    while target_epsilon - epsilon_high > tolerance:
        middle = (low + high) / 2
        epsilon = epsilon_of([Release(middle, sample_rate, steps)], delta)
        if epsilon < target_epsilon:
            high, epsilon_high = middle, epsilon
        else:
            low = middle
    return high


class NoiseBeyondUse(ValueError):
    """A privacy target that would need a noise multiplier above :data:`MAX_NOISE_MULTIPLIER`."""


@lru_cache(maxsize=256)
def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float = 1.0, steps: int = 1) -> float:
    """Smallest noise multiplier (to :func:`_search_noise_multiplier`'s tolerance) whose RDP
    composition over ``steps`` releases at ``sample_rate`` stays within (target_epsilon, delta)."""
    if not 0 < target_epsilon <= MAX_TARGET_EPSILON:
        raise ValueError(f"target epsilon must be in (0, {MAX_TARGET_EPSILON:g}], got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    # the search doubles sigma until the target holds: check first that a useful sigma can reach it
    with warnings.catch_warnings():
        # at this much noise the best RDP order is the largest Opacus tries: a loose bound is enough here
        warnings.simplefilter("ignore", UserWarning)
        reachable = epsilon_of([Release(MAX_NOISE_MULTIPLIER, sample_rate, steps)], delta)
    if reachable > target_epsilon:
        raise NoiseBeyondUse(
            f"epsilon {target_epsilon} at delta {delta} over {steps} steps at sample rate {sample_rate:.4g} needs a noise "
            f"multiplier above {MAX_NOISE_MULTIPLIER:g} (that noise gives epsilon {reachable:.3g})"
        )
    with warnings.catch_warnings():
        # the search tries noise far above the answer, where the best RDP order is the largest and
        # Opacus warns; whether the answer itself sits there is checked below, warning left on
        warnings.simplefilter("ignore", UserWarning)
        sigma = _search_noise_multiplier(target_epsilon, delta, sample_rate, steps)
    _epsilon.__wrapped__((Release(sigma, sample_rate, steps),), delta)  # not the cached value: its warnings
    return sigma


class PrivacyLedger:
    """Each client's releases, and its epsilon composed over all of them."""

    def __init__(self, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = delta
        self._releases: dict[str, list[Release]] = {}
        self._epsilon_cache: dict[str, float] = {}
        #: releases a client not seen before starts with (see :meth:`inherit_worst_history`)
        self._prior: list[Release] = []

    def inherit_worst_history(self) -> None:
        """From now on a client id not in the ledger starts with the history of its most charged
        client: after a resume, a client that comes back under a new id (a SuperNode with a new
        key, a new SuperLink) is never charged less than it was before; a really new one is
        over-charged, which is safe."""
        worst = max(self._releases, key=self.epsilon, default=None)
        self._prior = [] if worst is None else list(self._releases[worst])

    def record(self, client: str, release: Release) -> None:
        """Add one release; consecutive ones with the same noise and rate merge into one entry
        (as Opacus' own ``step`` does), so composing stays O(1) in the number of rounds."""
        if client not in self._releases and self._prior:
            self._releases[client] = list(self._prior)
        history = self._releases.setdefault(client, [])
        last = history[-1] if history else None
        if last is not None and last.same_mechanism(release):
            history[-1] = last.with_steps(last.steps + release.steps)
        else:
            history.append(release)
        self._epsilon_cache.pop(client, None)

    def record_many(self, clients: Sequence[Any], release: Release) -> None:
        """Charge every client in ``clients`` the same ``release`` (a population-wide round); the
        ledger names clients by ``str(id)``, as the replies do."""
        for client in clients:
            self.record(str(client), release)

    def releases(self, client: str) -> list[Release]:
        return list(self._releases.get(client, []))

    def epsilon(self, client: str) -> float:
        if client not in self._epsilon_cache:
            self._epsilon_cache[client] = epsilon_of(self._releases.get(client, []), self.delta)
        return self._epsilon_cache[client]

    def epsilons(self) -> dict[str, float]:
        return {client: self.epsilon(client) for client in self._releases}

    def state_dict(self) -> dict[str, list[list[float]]]:
        """Every client's releases as rows (see :meth:`Release.row`), for a checkpoint."""
        return {client: [r.row() for r in history] for client, history in self._releases.items()}

    def load_state_dict(self, rows: Mapping[str, Any]) -> None:
        """Replace the ledger by checkpointed rows; ValueError on anything that is not a release."""
        releases: dict[str, list[Release]] = {}
        for client, history in rows.items():
            if not isinstance(client, str) or not isinstance(history, list):
                raise ValueError("ledger: client ids map to lists of releases")
            checked = []
            for row in history:
                if not (isinstance(row, list) and len(row) in (3, 5) and all(isinstance(v, float) for v in row)):
                    raise ValueError(f"ledger: a release of {client} is not (noise, rate, steps[, l2, l1])")
                noise, rate, steps = row[:3]
                if not (noise >= 0 and 0 < rate <= 1 and steps >= 1 and steps.is_integer()):
                    raise ValueError(f"ledger: release {row} of {client} is not a valid mechanism")
                try:
                    checked.append(Release(noise, rate, int(steps), *row[3:]))
                except ValueError as err:
                    raise ValueError(f"ledger: release {row} of {client}: {err}") from None
            releases[client] = checked
        self._releases = releases
        self._epsilon_cache = {}

    @property
    def num_clients(self) -> int:
        """How many clients the ledger books."""
        return len(self._releases)

    def summary(self) -> tuple[float, float]:
        """(max, mean) epsilon over the clients that released anything; (0, 0) if none."""
        values = list(self.epsilons().values())
        if not values:
            return 0.0, 0.0
        return max(values), sum(values) / len(values)


def analytic_gaussian_delta(noise_multiplier: float, epsilon: float) -> float:
    """delta(eps) of one Gaussian mechanism of noise multiplier sigma (std / L2 sensitivity),
    exactly (Balle and Wang 2018, Theorem 8): Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s)."""
    from scipy.special import log_ndtr, ndtr

    s = noise_multiplier
    return float(ndtr(1 / (2 * s) - epsilon * s) - math.exp(epsilon + log_ndtr(-1 / (2 * s) - epsilon * s)))


def analytic_gaussian_noise_multiplier(epsilon: float, delta: float) -> float:
    """The smallest noise multiplier (to 1e-9 relative) for which one Gaussian release is
    (epsilon, delta)-DP, by the analytic Gaussian mechanism: valid for every epsilon > 0, where
    the classical sqrt(2 ln(1.25 / delta)) / epsilon holds only for epsilon < 1."""
    if epsilon <= 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if analytic_gaussian_delta(MAX_NOISE_MULTIPLIER, epsilon) > delta:
        raise NoiseBeyondUse(
            f"epsilon {epsilon} at delta {delta} in one release needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g}"
        )
    low, high = 1e-6, 1.0
    while analytic_gaussian_delta(high, epsilon) > delta:
        low, high = high, 2 * high
    while high - low > 1e-9 * high:
        middle = (low + high) / 2
        if analytic_gaussian_delta(middle, epsilon) > delta:
            low = middle
        else:
            high = middle
    return high
