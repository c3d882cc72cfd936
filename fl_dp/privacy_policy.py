"""Who adds which noise, against which neighbouring relation: the run's privacy policy.

- ``local`` (replace one client's data): each client noises its own bounded message, sensitivity
  2S (any two of its messages lie in the ball of radius S), charged at sample rate 1 each round
  it is sampled in.
- ``central`` (add or remove one client): the server noises the bounded sum once, sensitivity S,
  every client charged at its Poisson rate q every round.
- ``distributed``: as ``central``, the noise coming as Skellam shares from the clients
  (:mod:`fl_dp.distributed`).
- sample level (DP-SGD): each client calibrates its own noise from its sample rate.
"""

from __future__ import annotations

from fl_dp.config import ConfigError, RunConfig
from fl_dp.mechanisms import LocalGaussianNoise
from fl_dp.privacy import NoiseBeyondUse, Release, analytic_gaussian_noise_multiplier, calibrate_noise_multiplier
from fl_dp.registry import CLIENT, SAMPLE, spec_of
from fl_dp.rules import Algorithm


def is_client_level_private(cfg: RunConfig) -> bool:
    """Whether the strategy, as configured, protects each client's whole data (user level) when noised."""
    spec = spec_of(cfg.strategy)
    return spec.privacy == CLIENT and spec.can_be_private(cfg)


def is_sample_level_private(cfg: RunConfig) -> bool:
    """Whether the strategy protects each training sample (DP-SGD inside each client)."""
    return spec_of(cfg.strategy).privacy == SAMPLE


def message_bound(cfg: RunConfig) -> float:
    """The L2 radius of the ball that every noiseless client message of the strategy lies in."""
    bound = spec_of(cfg.strategy).bound
    if bound is None:
        raise ValueError(f"{cfg.strategy} has no bounded-sensitivity release")
    return bound(cfg)


def sensitivity(cfg: RunConfig) -> float:
    """L2 sensitivity of one release under the run's neighbouring relation.

    ``local`` (replace one client's data): any two datasets of a client give noiseless messages
    in the same ball of radius ``bound``, whatever its state, so they differ by at most 2 * bound.
    ``central`` (add or remove one client): the sum changes by one message, at most ``bound``.
    """
    bound = message_bound(cfg)
    return 2 * bound if cfg.privacy_model == "local" else bound


def resolve_noise_multiplier(cfg: RunConfig) -> float:
    """The noise multiplier of the run's mechanism: set directly, calibrated from the target, or 0.

    ``local``: each client's release is charged at sample rate 1 (worst case: a client in every
    planned round). ``central``: one release per round of the noised sum, every client charged at
    its Poisson rate q = clients-per-round / num-clients. dp-sign's ``round-epsilon`` calibrates
    each round's release alone with the analytic Gaussian mechanism (Balle and Wang 2018), exact
    for every epsilon (the classical sqrt(2 ln(1.25 / delta)) / eps fails above eps = 1).
    A target that needs a noise multiplier beyond use is a :class:`ConfigError` on ``target-epsilon``.
    """
    if cfg.noise_multiplier > 0:
        return cfg.noise_multiplier
    if cfg.privacy_model == "distributed":
        from fl_dp.distributed import mechanism_for

        return mechanism_for(cfg).noise_multiplier
    if is_sample_level_private(cfg):
        return 0.0  # each client calibrates from its own sample rate
    if cfg.round_epsilon > 0:
        try:
            return analytic_gaussian_noise_multiplier(cfg.round_epsilon, cfg.delta)
        except NoiseBeyondUse as err:
            raise ConfigError(f"round-epsilon {cfg.round_epsilon} cannot be reached with useful noise: {err}") from None
    if cfg.target_epsilon > 0:
        rate = cfg.client_sample_rate if cfg.privacy_model == "central" else 1.0
        return gaussian_noise_for_target(cfg.target_epsilon, cfg.delta, rate, cfg.num_server_rounds)
    return 0.0


def gaussian_noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The subsampled Gaussian's noise multiplier for ``target-epsilon``; a :class:`ConfigError` on
    that key where it needs noise beyond use."""
    try:
        return calibrate_noise_multiplier(target_epsilon, delta, sample_rate=sample_rate, steps=steps)
    except NoiseBeyondUse as err:
        raise ConfigError(f"target-epsilon {target_epsilon} cannot be reached with useful noise: {err}") from None


def client_noise_multiplier(cfg: RunConfig) -> float:
    """The Gaussian noise multiplier a client adds itself: the run's under ``local``; none under
    ``central`` (the server adds it) and ``distributed`` (Skellam shares, :mod:`fl_dp.distributed`)."""
    return resolve_noise_multiplier(cfg) if cfg.privacy_model == "local" else 0.0


def round_release(algorithm: Algorithm, postprocessor: LocalGaussianNoise | None, num_examples: int) -> Release | None:
    """What one client of ``num_examples`` examples releases in a round: its post-processor's noise,
    or the rule's own (dp-sign, DP-SGD); None where it releases nothing private itself."""
    if postprocessor is not None:
        return postprocessor.release()
    return algorithm.expected_release(num_examples)


def local_postprocessor(cfg: RunConfig, noise_multiplier: float | None = None) -> LocalGaussianNoise | None:
    """The post-processor that noises a client's message under ``local`` client-level DP (None
    where the rule's noise is its own, or where the server or secure aggregation adds it)."""
    spec = spec_of(cfg.strategy)
    if cfg.privacy_model != "local" or spec.privacy != CLIENT or spec.private_when is not None:
        return None  # sign-vote's dp-sign noises inside its rule
    # a run without noise keeps it (noise 0): its releases are booked at epsilon = inf
    noise = client_noise_multiplier(cfg) if noise_multiplier is None else noise_multiplier
    return LocalGaussianNoise(noise_multiplier=noise, bound=message_bound(cfg))
