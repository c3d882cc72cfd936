"""Distributed DP: each client adds a share of Skellam noise on the integer ring; the server sees only the sum.

A client of a round's cohort of n clients turns its bounded message m (||m|| <= S) into a vector
of Z_M, M = 2^bits:

    x = (round(scale * H D pad(m)) + Sk(V / n)) mod M,     V = (z D2)^2 / s,

H D a randomized Walsh-Hadamard rotation (public signs D, fresh each round; pad to a power of two),
``round`` unbiased stochastic rounding, Sk Skellam noise, s = ``secagg-survivors``. Secure
aggregation (Flower's SecAgg+, or :func:`ring_sum` in the in-process loop) reveals sum_i x_i mod M
only. The server adds Sk((n - n_s) V / n) for the n - n_s shares that did not survive, reduces the
sum to (-M/2, M/2], divides by ``scale`` and rotates back: sum_i m_i plus Skellam noise of variance
exactly V / scale^2 per coordinate, whatever the cohort and the dropouts, and the rounding errors.

Privacy (add or remove one client): the rounded message has integer L2 norm at most
D2 = scale * S + sqrt(d') (each coordinate moves by less than 1) and L1 norm at most
D2 * min(sqrt(d'), D2). The released sum's noise is Sk(V) with or without the client (its share
replaces a part of the others', it does not add variance an energy test could see), so the pair
is the same noise shifted by its message: a symmetric pair, accounted by :mod:`fl_dp.skellam` at
the variance (z D2)^2 <= V. The server's own view, before its top-up, holds n_s V / n >= (z D2)^2
once n_s >= s n shares survive (rounds with fewer are skipped). The modular sum is a
post-processing of the exact integer sum, so wrap-around never costs privacy; it costs accuracy,
and ``scale`` is chosen so that its probability per round is below :data:`WRAP_PROBABILITY` for
cohorts up to ``max_cohort`` (see :meth:`DistributedSkellam.wrap_bound`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from fl_dp.central import project_to_ball
from fl_dp.config import ConfigError, RunConfig
from fl_dp.privacy import MAX_NOISE_MULTIPLIER, Release, epsilon_of

#: the per-round probability, for a cohort of at most ``max_cohort`` clients, that some coordinate of
#: the integer sum leaves (-M/2, M/2] (the sum then wraps around and that coordinate is wrong)
WRAP_PROBABILITY = 1e-9


def padded_dim(dim: int) -> int:
    """The smallest power of two >= dim (the Walsh-Hadamard transform's length)."""
    return 1 << max(0, (dim - 1).bit_length())


def hadamard(v: torch.Tensor) -> torch.Tensor:
    """The orthonormal Walsh-Hadamard transform of a float64 vector whose length is a power of two
    (its own inverse)."""
    n = v.numel()
    if n & (n - 1):
        raise ValueError(f"length must be a power of two, got {n}")
    h = v.reshape(1, n).clone()
    width = 1
    while width < n:
        h = h.reshape(-1, 2, width)
        h = torch.stack((h[:, 0] + h[:, 1], h[:, 0] - h[:, 1]), dim=1)
        width *= 2
    return h.reshape(n) / math.sqrt(n)


def rotation_signs(seed: int, server_round: int, length: int) -> torch.Tensor:
    """The round's public +-1 diagonal D (derived from the run seed: server and clients agree)."""
    generator = np.random.default_rng(np.random.SeedSequence([seed, server_round, 0x5EC]))
    return torch.from_numpy(generator.integers(0, 2, size=length).astype(np.float64) * 2 - 1)


def stochastic_round(y: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """Each coordinate to floor or ceil with the probabilities that keep its mean (int64)."""
    values = y.numpy()
    low = np.floor(values)
    return (low + (rng.random(values.shape) < values - low)).astype(np.int64)


def skellam_noise(length: int, variance: float, rng: np.random.Generator) -> np.ndarray:
    """``length`` draws of Sk(variance) = Poisson(variance / 2) - Poisson(variance / 2) (int64)."""
    if variance == 0:
        return np.zeros(length, np.int64)
    return rng.poisson(variance / 2, length).astype(np.int64) - rng.poisson(variance / 2, length).astype(np.int64)


RING_KEY = "ring"


def check_share(arrays: object, mechanism: DistributedSkellam) -> np.ndarray:
    """The share a client's reply carries, or ValueError: one int64 vector of ``padded`` values in [0, M)."""
    if not isinstance(arrays, dict) or set(arrays) != {RING_KEY} or not isinstance(arrays[RING_KEY], np.ndarray):
        raise ValueError(f"a share is one '{RING_KEY}' array")
    share = arrays[RING_KEY]
    if share.shape != (mechanism.padded,) or share.dtype != np.int64:
        raise ValueError(f"a share is {mechanism.padded} int64 values, got {share.shape} {share.dtype}")
    if share.min(initial=0) < 0 or share.max(initial=0) >= mechanism.modulus:
        raise ValueError(f"a share's values lie in [0, {mechanism.modulus})")
    return share


def ring_sum(shares: list[np.ndarray], modulus: int) -> np.ndarray:
    """What secure aggregation reveals: the sum of the shares mod ``modulus`` (no cryptography)."""
    total = np.zeros_like(shares[0]) if shares else np.zeros(0, np.int64)
    for share in shares:
        total = (total + share) % modulus
    return total


@dataclass(frozen=True, kw_only=True)
class DistributedSkellam:
    """The distributed Skellam mechanism of one run (client encoder and server decoder).

    ``noise_multiplier`` z is relative to the integer sensitivity D2; ``survivor_fraction`` s is the
    fraction of a cohort's shares the noise is calibrated for; ``max_cohort`` bounds the clients
    whose shares are summed, for the wrap-around bound (and the cohort a client believes).
    """

    bound: float
    noise_multiplier: float
    dim: int
    survivor_fraction: float
    max_cohort: int
    bits: int = 20
    padded: int = field(init=False)
    scale: float = field(init=False)

    def __post_init__(self) -> None:
        if not self.bound > 0 or not self.noise_multiplier >= 0 or self.dim < 1:
            raise ValueError("bound > 0, noise multiplier >= 0 and dim >= 1 are needed")
        if not 0 < self.survivor_fraction <= 1 or self.max_cohort < 1:
            raise ValueError(
                f"need a survivor fraction in (0, 1] ({self.survivor_fraction}) and max cohort >= 1 ({self.max_cohort})"
            )
        if not 8 <= self.bits <= 30:
            raise ValueError(f"bits must be in [8, 30], got {self.bits}")
        object.__setattr__(self, "padded", padded_dim(self.dim))
        object.__setattr__(
            self,
            "scale",
            _largest_scale(self.bound, self.noise_multiplier, self.padded, self.survivor_fraction, self.max_cohort, self.bits),
        )

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def l2(self) -> float:
        """Integer L2 sensitivity of one client's rounded message."""
        return self.scale * self.bound + math.sqrt(self.padded)

    @property
    def l1(self) -> float:
        return self.l2 * min(math.sqrt(self.padded), self.l2)

    @property
    def total_variance(self) -> float:
        """V = (z D2)^2 / s: the integer noise variance of every released sum."""
        return (self.noise_multiplier * self.l2) ** 2 / self.survivor_fraction

    def share_variance(self, cohort: int) -> float:
        """The noise variance of one share of a cohort of ``cohort`` clients: V / cohort."""
        if not 1 <= cohort <= self.max_cohort:
            raise ValueError(f"a cohort of {cohort} clients is outside [1, {self.max_cohort}]")
        return self.total_variance / cohort

    def min_survivors(self, cohort: int) -> int:
        """The shares of a cohort that carry the calibrated variance (z D2)^2: ceil(s * cohort)."""
        return max(1, math.ceil(self.survivor_fraction * cohort - 1e-9))

    def top_up(self, cohort: int, survivors: int, rng: np.random.Generator) -> np.ndarray:
        """The server's Skellam noise for the ``cohort - survivors`` shares that did not arrive, so that
        the released sum carries the variance V whoever dropped (int64, ``padded`` values)."""
        if not 0 <= survivors <= cohort:
            raise ValueError(f"{survivors} survivors of a cohort of {cohort}")
        return skellam_noise(self.padded, (cohort - survivors) * self.share_variance(cohort), rng)

    @property
    def effective_noise_multiplier(self) -> float:
        """Noise std of a released sum in message units, over S: what the model sees."""
        return math.sqrt(self.total_variance) / (self.scale * self.bound)

    @property
    def share_bytes(self) -> int:
        """Bytes of one share packed at ``bits`` per coordinate (SecAgg+ itself sends int64: 8 each)."""
        return math.ceil(self.padded * self.bits / 8)

    def sum_norm_limit(self, survivors: int) -> float:
        """The norm that the decoded sum of ``survivors`` honest shares stays below except with
        probability 1e-9: their messages, rounding errors, and the noise (a chi tail with 10% slack)."""
        noise_std = math.sqrt(self.total_variance) / self.scale if self.scale else 0.0
        rounding = survivors * math.sqrt(self.padded) / self.scale
        noise = 1.1 * noise_std * (math.sqrt(self.padded) + math.sqrt(2 * math.log(1e9)))
        return survivors * self.bound + rounding + noise

    def wrap_bound(self, cohort: int) -> float:
        """Upper bound on the probability that the sum of ``cohort`` shares wraps in some coordinate."""
        return _wrap_probability(
            self.scale, self.bound, self.noise_multiplier, self.padded, self.survivor_fraction, cohort, self.bits
        )

    def encode(self, message: torch.Tensor, signs: torch.Tensor, rng: np.random.Generator, cohort: int) -> np.ndarray:
        """One client's share in a cohort of ``cohort``: its message projected to the ball, rotated,
        scaled, rounded and noised with Sk(V / cohort), mod M."""
        if message.numel() != self.dim or signs.numel() != self.padded:
            raise ValueError(f"message of {message.numel()} entries and {signs.numel()} signs for dim {self.dim}")
        bounded = project_to_ball(message.double(), self.bound)
        padded = torch.zeros(self.padded, dtype=torch.float64)
        padded[: self.dim] = bounded
        rotated = hadamard(signs * padded) * self.scale
        shares = stochastic_round(rotated, rng) + skellam_noise(self.padded, self.share_variance(cohort), rng)
        return np.mod(shares, self.modulus)

    def decode(self, total: np.ndarray, signs: torch.Tensor) -> torch.Tensor:
        """The noised sum of messages (float32, length dim) from the ring sum of the shares."""
        if (
            total.shape != (self.padded,)
            or total.dtype != np.int64
            or total.min(initial=0) < 0
            or total.max(initial=0) >= self.modulus
        ):
            raise ValueError(f"a ring sum is {self.padded} int64 values in [0, {self.modulus})")
        centred = np.where(total >= self.modulus // 2, total - self.modulus, total).astype(np.float64)
        unrotated = signs * hadamard(torch.from_numpy(centred) / self.scale)
        return unrotated[: self.dim].float()

    def release(self, sample_rate: float) -> Release:
        """What one round costs each client of the population (Skellam on a Poisson sample)."""
        if self.noise_multiplier == 0:
            return Release(0.0)
        return Release(self.noise_multiplier, sample_rate, 1, self.l2, self.l1)


def _log_tail(dim: int, probability: float) -> float:
    # each of the 2 * dim per-coordinate events (rotated signal, noise) gets probability / (2 dim)
    return math.log(4 * dim / probability)


def _noise_tail(variance: float, log_tail: float) -> float:
    """b with 2 exp(-b^2 / (2 (variance + b / 3))) = the per-coordinate share (Bernstein, Poisson differences)."""
    return log_tail / 3 + math.sqrt(log_tail**2 / 9 + 2 * variance * log_tail)


def _needed_half_range(
    scale: float, bound: float, noise: float, padded: int, fraction: float, cohort: int, log_tail: float
) -> float:
    l2 = scale * bound + math.sqrt(padded)
    variance = (noise * l2) ** 2 / fraction  # every sum's, the server's top-up included
    # Hoeffding for the rotated sum of messages (norm <= cohort * scale * bound), Bernstein for the
    # noise, and the rounding errors (< 1 each)
    signal = scale * cohort * bound * math.sqrt(2 * log_tail / padded)
    return signal + _noise_tail(variance, log_tail) + cohort


@lru_cache(maxsize=256)
def _largest_scale(bound: float, noise: float, padded: int, fraction: float, cohort: int, bits: int) -> float:
    """The largest scale whose sums of ``cohort`` shares stay in (-M/2, M/2] except with probability
    :data:`WRAP_PROBABILITY` per round (bisection; the needed range grows with the scale)."""
    half = (1 << bits) / 2 - 1
    log_tail = _log_tail(padded, WRAP_PROBABILITY)
    low, high = 0.0, half / bound
    if _needed_half_range(1e-9, bound, noise, padded, fraction, cohort, log_tail) > half:
        raise ValueError(f"{bits} bits cannot hold the noise of {cohort} shares: use more bits or fewer clients a round")
    for _ in range(100):
        middle = (low + high) / 2
        if _needed_half_range(middle, bound, noise, padded, fraction, cohort, log_tail) <= half:
            low = middle
        else:
            high = middle
    if low * bound < math.sqrt(padded):
        raise ValueError(
            f"{bits} bits leave a scale of {low:.3g}: rounding would dominate the message "
            "(scale * bound < sqrt(d')); use more bits"
        )
    return low


def _wrap_probability(scale: float, bound: float, noise: float, padded: int, fraction: float, cohort: int, bits: int) -> float:
    """The union bound behind :func:`_largest_scale`, evaluated for a given cohort."""
    half = (1 << bits) / 2 - 1
    l2 = scale * bound + math.sqrt(padded)
    variance = (noise * l2) ** 2 / fraction
    # split the range between signal and noise as the calibration does, and bound each tail
    signal_scale = scale * cohort * bound / math.sqrt(padded)
    room = half - cohort
    if room <= 0:
        return 1.0
    best = 1.0
    for share in np.linspace(0.001, 0.999, 999):
        a, b = share * room, (1 - share) * room
        p_signal = 2 * math.exp(-(a**2) / (2 * signal_scale**2)) if signal_scale > 0 else 0.0
        p_noise = 2 * math.exp(-(b**2) / (2 * (variance + b / 3))) if variance > 0 else 0.0
        best = min(best, padded * (p_signal + p_noise))
    return min(1.0, best)


#: Flower's SecAgg+ sums the shares and the clients' weights mod 2^32: cohort * 2^bits must stay below
SECAGG_MODULUS = 1 << 32


@lru_cache(maxsize=16)
def mechanism_for(cfg: RunConfig) -> DistributedSkellam:
    """The run's mechanism: noise calibrated to ``target-epsilon`` (or ``noise-multiplier``), which
    ceil(secagg-survivors * n) surviving shares of a cohort of n carry, composed over the planned
    rounds at the Poisson rate q; the cohort bound is the one Binomial(num-clients, q) exceeds with
    probability below :data:`WRAP_PROBABILITY`."""
    from scipy.stats import binom

    from fl_dp.models import num_params
    from fl_dp.privacy_policy import message_bound
    from fl_dp.task import model_for

    cfg.require_population()
    rate = cfg.client_sample_rate
    max_cohort = max(2, int(binom.isf(WRAP_PROBABILITY, cfg.num_clients, rate)) + 1)
    if max_cohort << cfg.secagg_bits >= SECAGG_MODULUS:
        raise ConfigError(
            f"secagg-bits {cfg.secagg_bits}: cohorts of up to {max_cohort} clients times 2^{cfg.secagg_bits} overflow SecAgg+'s "
            f"2^32 weights; lower secagg-bits or clients-per-round"
        )
    dim = num_params(model_for(cfg))

    bound = message_bound(cfg)

    def mechanism(noise: float) -> DistributedSkellam:
        try:
            return DistributedSkellam(
                bound=bound,
                noise_multiplier=noise,
                dim=dim,
                survivor_fraction=cfg.secagg_survivors,
                max_cohort=max_cohort,
                bits=cfg.secagg_bits,
            )
        except ValueError as err:
            raise ConfigError(f"secagg-bits: {err}") from None
        except OverflowError:  # a bound near float's limit squares past it
            raise ConfigError(
                f"clip: messages of norm up to {bound:g} cannot be scaled into {cfg.secagg_bits}-bit SecAgg+ shares"
            ) from None

    if cfg.noise_multiplier > 0:
        return mechanism(cfg.noise_multiplier)
    if cfg.target_epsilon == 0:
        return mechanism(0.0)
    return mechanism(_calibrate(cfg.target_epsilon, cfg.delta, rate, cfg.num_server_rounds, mechanism))


def _calibrate(target: float, delta: float, rate: float, rounds: int, mechanism: Callable[[float], DistributedSkellam]) -> float:
    """The smallest noise multiplier (to 0.1%) whose Skellam composition stays within (target, delta)."""

    def epsilon(noise: float) -> float:
        return epsilon_of([mechanism(noise).release(rate).with_steps(rounds)], delta)

    from fl_dp.privacy_policy import gaussian_noise_for_target

    # the Gaussian's multiplier for the target: the Skellam one is at least about as large
    low = 0.5 * gaussian_noise_for_target(target, delta, rate, rounds)
    high = 2 * low
    while epsilon(high) > target:
        low, high = high, 2 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target-epsilon {target} cannot be reached with useful Skellam noise (multiplier > {MAX_NOISE_MULTIPLIER:g})"
            )
    while high - low > 1e-3 * high:
        middle = (low + high) / 2
        if epsilon(middle) > target:
            low = middle
        else:
            high = middle
    return high
