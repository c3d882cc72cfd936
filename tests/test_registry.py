"""The strategy registry: one entry per key, read by config validation, the factory, the privacy
policy and the README's table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fl_dp import registry, rules
from fl_dp.config import ConfigError, RunConfig
from fl_dp.inprocess import run_inprocess
from fl_dp.privacy_policy import message_bound
from fl_dp.registry import CLIENT, REGISTRY, StrategySpec, build_algorithm, strategies_table

NEEDS = {"dp-sgd": dict(target_epsilon=2.0), "dp-sgd-rs": dict(target_epsilon=2.0)}


def test_the_readme_table_is_the_registrys():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert strategies_table() in readme, "README.md's strategy table differs from fl_dp.registry.strategies_table()"


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_every_strategy_builds_and_client_level_ones_state_their_bound(key):
    cfg = RunConfig(strategy=key, **NEEDS.get(key, {}))
    rule = build_algorithm(cfg, 50)
    assert isinstance(rule, rules.Algorithm)
    spec = REGISTRY[key]
    if spec.privacy == CLIENT and spec.private_when is None:
        # the bound the noise is calibrated for is the one the rule enforces
        assert rule.message_bound == pytest.approx(message_bound(cfg))


def test_a_variant_key_of_one_strategy_is_refused_by_the_others():
    with pytest.raises(ConfigError, match="local-steps is a key of alpha-normec only"):
        RunConfig(strategy="clip21", local_steps=3)
    with pytest.raises(ConfigError, match="rs-final-rate is a key of dp-sgd-rs only"):
        RunConfig(strategy="dp-sgd", target_epsilon=1.0, rs_final_rate=0.5)
    RunConfig(strategy="alpha-normec", local_steps=3)


def test_a_new_strategy_is_one_registry_entry(monkeypatch, tiny_cfg):
    """A strategy nobody wrote before, added the way the registry's docstring says: config validation
    accepts its key, the factory builds it, both sides of a round run it."""
    spec = StrategySpec(
        key="normalized-mean-sgd",
        algorithm="the mean of normalized gradients",
        sends="`Norm_a(v_i)`",
        privacy_text="none",
        build=lambda cfg, dim: rules.Uncompensated(
            operator=rules.normec.SmoothedNormalization(alpha=cfg.alpha), server_lr=cfg.server_lr, batch_size=cfg.batch_size
        ),
    )
    monkeypatch.setitem(registry.REGISTRY, spec.key, spec)
    history = run_inprocess(tiny_cfg.replace(strategy="normalized-mean-sgd", server_lr=0.5))
    assert list(history["accepted"]) == [4, 4, 4]
    assert history["test-loss"].iloc[-1] < history["test-loss"].iloc[0]
    with pytest.raises(ConfigError, match="no privacy mechanism"):
        RunConfig(strategy="normalized-mean-sgd", noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="privacy-model 'central'"):
        RunConfig(strategy="normalized-mean-sgd", privacy_model="central")


def test_named_constructors_are_keyword_only():
    with pytest.raises(TypeError):
        rules.alpha_normec(0.1, 0.5, 10, 0)  # type: ignore[misc]
    rule = rules.alpha_normec(alpha=0.1, server_lr=0.5, num_clients=10, batch_size=0)
    assert rule.message_bound == 1.0 and rule.beta == 1.0
    assert torch.equal(rule.init_server_state(3)["G"], torch.zeros(3))
