"""One entry per strategy key: its update rule, privacy level, message bound and config rules.

Config validation, the factory (:func:`build_algorithm`), the privacy policy, the README's
strategy table and docs/usage.md's table of each strategy's keys (and their tests) all read
:data:`REGISTRY`. Adding a strategy is one rule (a module or class in :mod:`fl_dp.rules`) and one
:class:`StrategySpec` line in :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_dp import rules
from fl_dp.compressors import Compressor, build_compressor
from fl_dp.errors import ConfigError
from fl_dp.rules import Algorithm

if TYPE_CHECKING:
    from fl_dp.config import RunConfig

#: privacy levels: nothing private; one client's whole contribution (user level); each sample (DP-SGD)
NONE, CLIENT, SAMPLE = "none", "client", "sample"
#: every privacy model of the project; a strategy lists those it supports
PRIVACY_MODELS = ("local", "central", "distributed")
#: the keys that make a run private
PRIVACY_KEYS = ("target-epsilon", "noise-multiplier", "round-epsilon")
#: the keys that tune an update rule: a strategy lists those its rule reads in ``keys``, and a run
#: config leaves every other one at its default (a value set there would change nothing, silently)
RULE_KEYS = (
    "alpha",
    "beta",
    "clip",
    "client-lr",
    "local-epochs",
    "momentum",
    "local-steps",
    "server-normalize",
    "compressor",
    "compress-k",
    "compress-ratio",
    "sgdm-eta",
    "sign-compressor",
    "sto-sign-bound",
    "round-epsilon",
    "rs-final-rate",
)


@dataclass(frozen=True, kw_only=True)
class StrategySpec:
    """A strategy key: how to build its rule from a run config, and what it needs and refuses."""

    key: str
    #: the README table's columns: the algorithm (and paper), what a client sends, its privacy
    algorithm: str
    sends: str
    privacy_text: str
    build: Callable[[RunConfig, int], Algorithm]
    #: NONE, CLIENT or SAMPLE: the level of the run's guarantee when it is private
    privacy: str = NONE
    #: for a strategy private in some configurations only (sign-vote: dp-sign)
    private_when: Callable[[RunConfig], bool] | None = None
    #: L2 radius of every noiseless client message (client-level private strategies)
    bound: Callable[[RunConfig], float] | None = None
    #: privacy models it supports (others than ``local`` need a bound and a rule linear in the sum)
    privacy_models: tuple[str, ...] = ("local",)
    #: the keys of RULE_KEYS its rule reads
    keys: tuple[str, ...] = ()
    #: the keys a config leaves without effect (key: why): of its own, e.g. the local step size at one
    #: local step, or others its rule ignores, e.g. DP-SGD's regularizer-lambda
    idle: Callable[[RunConfig], dict[str, str]] | None = None
    #: whether a robust aggregator may replace the mean of its messages
    robust_aggregation: bool = True
    #: further rules on a config, raising :class:`ConfigError` with the key
    check: Callable[[RunConfig], None] | None = None

    def can_be_private(self, cfg: RunConfig) -> bool:
        return self.privacy != NONE and (self.private_when is None or self.private_when(cfg))

    def unread_keys(self, cfg: RunConfig) -> dict[str, str]:
        """Every rule key this strategy does not read under ``cfg``, with the reason (for the error
        that refuses one set away from its default)."""
        unread = {
            key: f"{self.key} does not read it (a key of {', '.join(_readers(key))})" for key in RULE_KEYS if key not in self.keys
        }
        if self.idle is not None:
            unread.update({key: f"{self.key} does not read it here: {why}" for key, why in self.idle(cfg).items()})
        return unread

    def validate(self, cfg: RunConfig) -> None:
        if self.check is not None:
            self.check(cfg)
        if cfg.is_private and not self.can_be_private(cfg):
            keys = [key for key in PRIVACY_KEYS if getattr(cfg, key.replace("-", "_"))]
            raise ConfigError(f"{self.key} has no privacy mechanism: leave {', '.join(keys)} at 0")
        if cfg.is_private and self.privacy == CLIENT and cfg.num_clients > 0 and cfg.delta * cfg.num_clients >= 1:
            # publishing the data of one client drawn at random meets (0, 1/num-clients)-DP
            raise ConfigError(
                f"delta {cfg.delta:g} is not below 1/num-clients = {1 / cfg.num_clients:g}: at that delta the guarantee "
                "allows one client's data to be published whole; use a delta far below it (the default is 1e-5)"
            )
        if cfg.privacy_model not in self.privacy_models:
            raise ConfigError(
                f"privacy-model {cfg.privacy_model!r} needs a strategy with a norm-bounded client message "
                f"({', '.join(s.key for s in REGISTRY.values() if cfg.privacy_model in s.privacy_models)}); "
                f"{self.key!r} is not one"
            )
        if cfg.aggregator != "mean" and not self.robust_aggregation:
            raise ConfigError(
                f"aggregator {cfg.aggregator!r} replaces a mean of messages: {self.key} has none (its vote is robust itself)"
            )


# ---------------------------------------------------------------- builders


def _server_lr(cfg: RunConfig) -> float:
    if cfg.server_lr <= 0:
        raise ConfigError(f"{cfg.strategy} needs server-lr > 0 (compute a theory step size with fl_dp.stepsizes and pass it)")
    return cfg.server_lr


def _compressor(cfg: RunConfig, dim: int) -> Compressor:
    return build_compressor(cfg.compressor, dim, cfg.compress_k, cfg.compress_ratio)


def _client_noise(cfg: RunConfig) -> float:
    from fl_dp.privacy_policy import client_noise_multiplier

    return client_noise_multiplier(cfg)


def _build_sign_vote(cfg: RunConfig, dim: int) -> Algorithm:
    if cfg.sign_compressor == "dp-sign":
        return rules.dp_sign_vote(
            clip=cfg.clip, noise_multiplier=_client_noise(cfg), server_lr=_server_lr(cfg), batch_size=cfg.batch_size
        )
    return rules.sign_vote(
        compressor=cfg.sign_compressor, server_lr=_server_lr(cfg), batch_size=cfg.batch_size, sto_sign_bound=cfg.sto_sign_bound
    )


def _build_dp_sgd(cfg: RunConfig, dim: int) -> Algorithm:
    return rules.dp_sgd(
        clip=cfg.clip,
        client_lr=cfg.client_lr,
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        delta=cfg.delta,
        num_rounds=cfg.num_server_rounds,
        target_epsilon=cfg.target_epsilon,
        noise_multiplier=cfg.noise_multiplier,
        server_lr=cfg.server_lr or 1.0,
        momentum=cfg.momentum,
        final_rate=cfg.rs_final_rate if cfg.strategy == "dp-sgd-rs" else 0.0,
        mask_seed=cfg.seed,
    )


# ---------------------------------------------------------------- config rules


def _fedavg_is_not_private(cfg: RunConfig) -> None:
    if cfg.is_private:
        raise ConfigError("fedavg is non-private: use dp-fedavg for target-epsilon / noise-multiplier")


def _contractive_compressor(cfg: RunConfig) -> None:
    if cfg.compressor != "identity" and cfg.compress_k == 0 and cfg.compress_ratio == 0:
        raise ConfigError("set compress-k >= 1 or compress-ratio > 0 for a sparsifying compressor")
    if cfg.compressor == "rand-k-unbiased":
        raise ConfigError(
            "compressor 'rand-k-unbiased' scales by d/k and is not contractive (E||C(v) - v||^2 = (d/k - 1) ||v||^2): "
            "EF21 strategies need top-k, rand-k or identity"
        )


def _sign_vote_privacy(cfg: RunConfig) -> None:
    dp_sign = cfg.sign_compressor == "dp-sign"
    if cfg.is_private and not dp_sign:
        raise ConfigError("only sign-compressor 'dp-sign' is private: set it, or leave the privacy keys at 0")
    if dp_sign and not cfg.is_private:
        raise ConfigError("dp-sign needs round-epsilon, target-epsilon or noise-multiplier > 0")


def _dp_sgd_needs(cfg: RunConfig) -> None:
    if not (cfg.target_epsilon > 0 or cfg.noise_multiplier > 0):
        raise ConfigError(f"{cfg.strategy} needs target-epsilon or noise-multiplier > 0")
    if cfg.batch_size < 1:
        raise ConfigError(f"{cfg.strategy} needs batch-size >= 1 (the expected Poisson batch)")


def _readers(key: str) -> list[str]:
    return [spec.key for spec in REGISTRY.values() if key in spec.keys]


def _idle_local_step_size(cfg: RunConfig) -> dict[str, str]:
    return {"client-lr": "it is the step size of local-steps > 1"} if cfg.local_steps == 1 else {}


def _idle_compression_keys(cfg: RunConfig) -> dict[str, str]:
    if cfg.compressor == "identity":
        return {key: "compressor 'identity' sends the whole vector" for key in ("compress-k", "compress-ratio")}
    return {"compress-ratio": "compress-k > 0 sets k"} if cfg.compress_k > 0 else {}


def _idle_sign_keys(cfg: RunConfig) -> dict[str, str]:
    idle = {} if cfg.sign_compressor == "sto-sign" else {"sto-sign-bound": "sign-compressor 'sto-sign' reads it"}
    if cfg.sign_compressor != "dp-sign":
        idle.update({key: "sign-compressor 'dp-sign' reads it" for key in ("clip", "round-epsilon")})
    idle["byzantine-attack"] = (
        "a majority vote reads only the bits of a message, which a Byzantine client can flip (the default "
        "'sign-flip') but not make larger"
    )
    return idle


def _idle_for_per_sample_gradients(cfg: RunConfig) -> dict[str, str]:
    return {
        "regularizer-lambda": "its per-sample gradients exclude the regulariser",
        "grad-noise": "it clips each sample's gradient, which has no heavy-tailed minibatch noise to add",
    }


def _clip_bound(cfg: RunConfig) -> float:
    return cfg.clip


def _unit_bound(cfg: RunConfig) -> float:
    return 1.0  # Norm_alpha maps into the open unit ball


_BOUNDED = PRIVACY_MODELS


_COMPRESSION_KEYS = ("compressor", "compress-k", "compress-ratio")
_LOCAL_TRAINING_KEYS = ("client-lr", "local-epochs", "momentum")


def _ef21_family(
    key: str, algorithm: str, sends: str, build: Callable[[RunConfig, int], Algorithm], keys: tuple[str, ...] = ()
) -> StrategySpec:
    return StrategySpec(
        key=key,
        algorithm=algorithm,
        sends=sends,
        privacy_text="none",
        build=build,
        keys=_COMPRESSION_KEYS + keys,
        idle=_idle_compression_keys,
        check=_contractive_compressor,
    )


REGISTRY: dict[str, StrategySpec] = {
    spec.key: spec
    for spec in (
        StrategySpec(
            key="alpha-normec",
            algorithm="alpha-NormEC (Shulgin et al. 2025): smoothed normalization + error compensation",
            sends="`Norm_a(v_i - g_i) + z_i` (dense)",
            privacy_text="client-level Gaussian",
            build=lambda cfg, dim: rules.alpha_normec(
                alpha=cfg.alpha,
                beta=cfg.beta,
                server_lr=_server_lr(cfg),
                num_clients=cfg.num_clients,
                batch_size=cfg.batch_size,
                local_steps=cfg.local_steps,
                client_lr=cfg.client_lr,
                server_normalize=cfg.server_normalize,
            ),
            privacy=CLIENT,
            bound=_unit_bound,
            privacy_models=_BOUNDED,
            keys=("alpha", "beta", "local-steps", "client-lr", "server-normalize"),
            idle=_idle_local_step_size,
        ),
        StrategySpec(
            key="dp-normalized-sgd",
            algorithm="the same without error compensation",
            sends="`Norm_a(v_i) + z_i`",
            privacy_text="client-level Gaussian",
            build=lambda cfg, dim: rules.dp_normalized_sgd(alpha=cfg.alpha, server_lr=_server_lr(cfg), batch_size=cfg.batch_size),
            keys=("alpha",),
            privacy=CLIENT,
            bound=_unit_bound,
            privacy_models=_BOUNDED,
        ),
        StrategySpec(
            key="clip21",
            algorithm="Clip21: clipping instead of normalization, with error feedback",
            sends="`clip_tau(v_i - g_i) + z_i`",
            privacy_text="client-level Gaussian",
            build=lambda cfg, dim: rules.clip21(
                tau=cfg.clip, server_lr=_server_lr(cfg), num_clients=cfg.num_clients, batch_size=cfg.batch_size
            ),
            keys=("clip",),
            privacy=CLIENT,
            bound=_clip_bound,
            privacy_models=_BOUNDED,
        ),
        StrategySpec(
            key="dp-fedavg",
            algorithm="DP-FedAvg: local SGD, update clipped to `clip`, Gaussian noise",
            sends="`clip(delta_i) + z_i`",
            privacy_text="client-level Gaussian",
            build=lambda cfg, dim: rules.dp_fedavg(
                clip=cfg.clip,
                client_lr=cfg.client_lr,
                local_epochs=cfg.local_epochs,
                batch_size=cfg.batch_size,
                server_lr=cfg.server_lr or 1.0,
                momentum=cfg.momentum,
            ),
            keys=("clip", *_LOCAL_TRAINING_KEYS),
            privacy=CLIENT,
            bound=_clip_bound,
            privacy_models=_BOUNDED,
        ),
        StrategySpec(
            key="fedavg",
            algorithm="FedAvg",
            sends="`delta_i`",
            privacy_text="none",
            build=lambda cfg, dim: rules.fedavg(
                client_lr=cfg.client_lr,
                local_epochs=cfg.local_epochs,
                batch_size=cfg.batch_size,
                server_lr=cfg.server_lr or 1.0,
                momentum=cfg.momentum,
            ),
            keys=_LOCAL_TRAINING_KEYS,
            check=_fedavg_is_not_private,
        ),
        _ef21_family(
            "ef21",
            "EF21 (Richtarik et al. 2021)",
            "`C(v_i - g_i)`: values + indices",
            lambda cfg, dim: rules.ef21(
                compressor=_compressor(cfg, dim),
                server_lr=_server_lr(cfg),
                num_clients=cfg.num_clients,
                batch_size=cfg.batch_size,
            ),
        ),
        _ef21_family(
            "ef21-norm",
            "‖EF21‖ (Khirirat et al. 2024): normalized server step `gamma0/sqrt(T+1)`",
            "`C(v_i - g_i)`",
            lambda cfg, dim: rules.ef21_norm(
                compressor=_compressor(cfg, dim),
                server_lr=_server_lr(cfg),
                num_rounds=cfg.num_server_rounds,
                num_clients=cfg.num_clients,
                batch_size=cfg.batch_size,
            ),
        ),
        _ef21_family(
            "ef21-sgdm-norm",
            "‖EF21-SGDM‖: client momentum, normalized step",
            "`C(m_i - g_i)`",
            lambda cfg, dim: rules.ef21_sgdm_norm(
                compressor=_compressor(cfg, dim),
                eta=cfg.sgdm_eta,
                server_lr=_server_lr(cfg),
                num_rounds=cfg.num_server_rounds,
                num_clients=cfg.num_clients,
                batch_size=cfg.batch_size,
            ),
            keys=("sgdm-eta",),
        ),
        StrategySpec(
            key="sign-vote",
            algorithm="signSGD with majority vote; `sign-compressor` = `sign`, `sto-sign` (bound b) or `dp-sign`",
            sends="1 bit a coordinate",
            privacy_text="`dp-sign`: Gaussian, per round",
            build=_build_sign_vote,
            privacy=CLIENT,
            private_when=lambda cfg: cfg.sign_compressor == "dp-sign",
            bound=_clip_bound,
            keys=("sign-compressor", "sto-sign-bound", "clip", "round-epsilon"),
            idle=_idle_sign_keys,
            robust_aggregation=False,
            check=_sign_vote_privacy,
        ),
        StrategySpec(
            key="ef-sign",
            algorithm="EF-SignSGD: scaled sign with error feedback",
            sends="1 bit a coordinate + one float",
            privacy_text="none",
            build=lambda cfg, dim: rules.ef_sign(server_lr=_server_lr(cfg), batch_size=cfg.batch_size),
        ),
        StrategySpec(
            key="mean-sgd",
            algorithm="distributed SGD, mean aggregation (the baseline of the sign experiments)",
            sends="`v_i`",
            privacy_text="none",
            build=lambda cfg, dim: rules.mean_sgd(server_lr=_server_lr(cfg), batch_size=cfg.batch_size),
        ),
        StrategySpec(
            key="dp-sgd",
            algorithm="DP-SGD inside each client (Abadi et al. 2016); FedAvg on the server",
            sends="`x_local - x`",
            privacy_text="sample-level Gaussian (per client)",
            build=_build_dp_sgd,
            keys=("clip", *_LOCAL_TRAINING_KEYS),
            privacy=SAMPLE,
            idle=_idle_for_per_sample_gradients,
            check=_dp_sgd_needs,
        ),
        StrategySpec(
            key="dp-sgd-rs",
            algorithm="DP-SGD with random sparsification (Zhu & Blaschko 2023); FedAvg on the server",
            sends="`x_local - x`: values + indices where that is smaller than dense",
            privacy_text="sample-level Gaussian (per client)",
            build=_build_dp_sgd,
            privacy=SAMPLE,
            keys=("clip", *_LOCAL_TRAINING_KEYS, "rs-final-rate"),
            idle=_idle_for_per_sample_gradients,
            check=_dp_sgd_needs,
        ),
    )
}

STRATEGIES = tuple(REGISTRY)


def spec_of(strategy: str) -> StrategySpec:
    """The registry entry of ``strategy``, or a :class:`ConfigError` naming the key."""
    if strategy not in REGISTRY:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return REGISTRY[strategy]


def build_algorithm(cfg: RunConfig, dim: int) -> Algorithm:
    """The update rule of ``cfg.strategy`` for a model of ``dim`` parameters."""
    return spec_of(cfg.strategy).build(cfg, dim)


def strategy_keys_table() -> str:
    """docs/usage.md's table of the rule keys each strategy reads, from the registry."""
    lines = ["| strategy key | the rule keys it reads |", "|---|---|"]
    lines += [f"| `{s.key}` | {', '.join(f'`{key}`' for key in s.keys) or 'none'} |" for s in REGISTRY.values()]
    return "\n".join(lines)


def strategies_table() -> str:
    """The README's strategy table, from the registry."""
    lines = ["| strategy key | algorithm | a client sends | privacy |", "|---|---|---|---|"]
    lines += [f"| `{s.key}` | {s.algorithm} | {s.sends} | {s.privacy_text} |" for s in REGISTRY.values()]
    return "\n".join(lines)
