"""RDP accounting of the (distributed) Skellam mechanism, with Poisson subsampling.

Skellam noise Sk(mu) = Poisson(mu / 2) - Poisson(mu / 2) has variance mu and is closed under
summation: t clients adding Sk(mu / t) each give exactly Sk(mu). For an integer vector query of L2
and L1 sensitivities D2, D1 the mechanism is (alpha, eps(alpha))-RDP for every integer alpha > 1
(Agarwal, Kairouz and Liu, NeurIPS 2021, Corollary 3.6 / 4.1):

    eps(alpha) = alpha D2^2 / (2 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu)).

With mu = (z D2)^2, z is the noise multiplier of a Gaussian of the same variance, and the first
term is the Gaussian's RDP.

Poisson subsampling at rate q (add or remove one client), integer orders. With P the output
distribution without the client, Q with it, and M = (1 - q) P + q Q:

- remove direction, exactly for any pair: E_P[(M/P)^alpha] = sum_k C(alpha, k) (1 - q)^(alpha - k)
  q^k E_P[(Q/P)^k], and E_P[(Q/P)^k] = exp((k - 1) D_k(Q || P)) <= exp((k - 1) eps(k)) term by term;
- add direction, D_alpha(P || M) <= D_alpha(M || P) whenever (P, Q) is a *symmetric pair*: some
  bijection maps P to Q and Q to P (for noise symmetric about 0 and Q = P + s, x -> s - x does),
  so that the likelihood ratio L = Q/P has E_P[L g(L)] = E_P[g(1/L)] for every g. Pairing each
  value u = L > 1 with 1/u, the claim follows from the pointwise inequality, for u >= 1, a real
  alpha > 1 and a = 1 - q + q u, b = (1 - q) u + q:
      a^(1-alpha) + u^alpha b^(1-alpha) <= a^alpha + u^(1-alpha) b^alpha.
  Proof: with phi(s) = s^alpha - s^(1-alpha), y = q (u - 1), it reads F = phi(1 + y) + u phi(1 - y/u)
  >= 0. d/du [u phi(1 - y/u)] = psi(s) := phi(s) + (1 - s) phi'(s) at s = 1 - y/u < 1, and psi(1) = 0,
  psi' = (1 - s) phi'' < 0 on (0, 1) (phi'' = alpha (alpha - 1)(s^(alpha-2) - s^(-alpha-1)) < 0 there), so
  psi > 0: F grows with u, and at its smallest u = 1 + y, F = phi(r) + r phi(1/r) = 0 (r = 1 + y).

Skellam noise is symmetric about 0, so every (rounding outcome of a) neighbouring pair of the
distributed sum is a symmetric pair; over the rounding randomness both divergences are at most
their maximum over the outcomes (joint convexity). The subsampled RDP is therefore the binomial
sum above with the Skellam eps(k) of every order: the formula that is exact for the Gaussian
(Mironov, Talwar and Zhang 2019) without the factor 3 that Zhu and Wang's bound for arbitrary
mechanisms puts on the orders >= 3 (ICML 2019, "Poisson subsampled Renyi differential privacy").
``tests/test_skellam.py`` checks it against exact divergences of subsampled Skellam pairs in one
and two dimensions. The RDP curve converts to (eps, delta) with Opacus' conversion, the one every
other release of the ledger uses.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fl_dp.privacy import Release


def opacus_rdp() -> ModuleType:
    """Opacus' RDP analysis (``compute_rdp``, ``get_privacy_spent``), imported on first use:
    importing any part of opacus loads its whole privacy engine (about 1.3 s and 110 MB a
    process), which a client that never computes an epsilon (central or no DP) does not need."""
    from fl_dp.opacus_import import import_opacus

    import_opacus()
    from opacus.accountants.analysis import rdp

    return rdp


#: integer RDP orders (the subsampling bound holds at integer orders only); the largest ones let an
#: epsilon fall below log(1 / delta) / 255 (0.045 at delta 1e-5), as :data:`fl_dp.privacy.ORDERS` do
ORDERS: tuple[int, ...] = tuple(range(2, 129)) + (160, 192, 256, 384, 512, 768, 1024)


def skellam_rdp(alpha: int, noise_multiplier: float, l2: float, l1: float) -> float:
    """RDP at integer order ``alpha`` of one Skellam release of variance (noise_multiplier * l2)^2."""
    if alpha < 2 or int(alpha) != alpha:
        raise ValueError(f"order must be an integer >= 2, got {alpha}")
    if not (noise_multiplier > 0 and l2 > 0 and l1 > 0):
        raise ValueError("noise multiplier and sensitivities must be positive")
    mu = (noise_multiplier * l2) ** 2
    return alpha * l2**2 / (2 * mu) + min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu))


def poisson_subsampled_rdp(alpha: int, rate: float, rdp: Sequence[float]) -> float:
    """RDP at integer order ``alpha`` of a symmetric-pair mechanism (module docstring) applied to a
    Poisson sample at ``rate``, from its RDP ``rdp[k]`` at every integer order k = 2..alpha (index k):
    log(sum_k C(alpha, k) (1 - q)^(alpha - k) q^k exp((k - 1) rdp[k])) / (alpha - 1)."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    if rate == 1:
        return float(rdp[alpha])
    # imported here: scipy.special takes 0.33 s and 16 MiB in every process that imports the config,
    # and only the Skellam ledger of distributed DP needs it
    from scipy.special import gammaln, logsumexp

    log_q, log_1q = math.log(rate), math.log1p(-rate)
    # k = 0 and k = 1 together: E_P[1] = E_P[Q/P] = 1
    terms = [(alpha - 1) * log_1q + math.log(alpha * rate - rate + 1)]
    for order in range(2, alpha + 1):
        log_comb = gammaln(alpha + 1) - gammaln(order + 1) - gammaln(alpha - order + 1)
        terms.append(log_comb + (alpha - order) * log_1q + order * log_q + (order - 1) * rdp[order])
    return float(logsumexp(terms)) / (alpha - 1)


@lru_cache(maxsize=1024)
def skellam_rdp_curve(noise_multiplier: float, rate: float, l2: float, l1: float) -> np.ndarray:
    """RDP per step at :data:`ORDERS` of a Skellam release on a Poisson sample at ``rate``."""
    plain = [math.inf, math.inf] + [skellam_rdp(a, noise_multiplier, l2, l1) for a in range(2, max(ORDERS) + 1)]
    return np.array([min(poisson_subsampled_rdp(a, rate, plain), plain[a]) for a in ORDERS])


def rdp_curve(release: Release) -> np.ndarray:
    """RDP at :data:`ORDERS` of all the steps of ``release`` (Gaussian or Skellam)."""
    if release.is_skellam:
        return release.steps * skellam_rdp_curve(
            release.noise_multiplier, release.sample_rate, release.skellam_l2, release.skellam_l1
        )
    return np.asarray(
        opacus_rdp().compute_rdp(
            q=release.sample_rate, noise_multiplier=release.noise_multiplier, steps=release.steps, orders=list(ORDERS)
        )
    )


def epsilon_of_mixed(releases: Sequence[Release], delta: float) -> float:
    """(eps, delta) of the RDP composition of Gaussian and Skellam releases, at integer orders."""
    total = sum((rdp_curve(r) for r in releases), np.zeros(len(ORDERS)))
    with warnings.catch_warnings():
        # an optimum at the largest order means a loose (safe) bound: calibration probes such points
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = opacus_rdp().get_privacy_spent(orders=list(ORDERS), rdp=total, delta=delta)
    return float(eps)  # below 0 at a large delta: privacy.epsilon_of clamps it
