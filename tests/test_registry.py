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


def test_the_usage_pages_keys_table_is_the_registrys():
    usage = (Path(__file__).parents[1] / "docs" / "usage.md").read_text()
    assert registry.strategy_keys_table() in usage, "docs/usage.md's keys table differs from strategy_keys_table()"


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_every_strategy_builds_and_client_level_ones_state_their_bound(key):
    cfg = RunConfig(strategy=key, **NEEDS.get(key, {}))
    rule = build_algorithm(cfg, 50)
    assert isinstance(rule, rules.Algorithm)
    spec = REGISTRY[key]
    if spec.privacy == CLIENT and spec.private_when is None:
        # the bound the noise is calibrated for is the one the rule enforces
        assert rule.message_bound == pytest.approx(message_bound(cfg))


#: a valid value away from its default for every rule key
RULE_KEY_VALUES = {
    "alpha": 0.3,
    "beta": 0.5,
    "clip": 0.5,
    "client-lr": 0.1,
    "local-epochs": 2,
    "momentum": 0.5,
    "local-steps": 2,
    "server-normalize": True,
    "compressor": "rand-k",
    "compress-k": 3,
    "compress-ratio": 0.2,
    "sgdm-eta": 0.5,
    "sign-compressor": "sto-sign",
    "sto-sign-bound": 2.0,
    "round-epsilon": 1.0,
    "rs-final-rate": 0.5,
}
#: configs under which a strategy's builder reads each of its keys
READING = {
    "alpha-normec": [dict(local_steps=2)],
    "sign-vote": [dict(sign_compressor="sto-sign"), dict(sign_compressor="dp-sign", round_epsilon=1.0)],
}


class RecordingConfig:
    """A run config that records the fields read from it."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg, self.read = cfg, set()

    def __getattr__(self, name: str):
        self.read.add(name.replace("_", "-"))
        return getattr(self.cfg, name)


def test_rule_key_values_cover_every_rule_key():
    assert set(RULE_KEY_VALUES) == set(registry.RULE_KEYS)
    assert all(RunConfig.__dataclass_fields__[key.replace("-", "_")].default != v for key, v in RULE_KEY_VALUES.items())


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_a_strategys_keys_are_the_rule_keys_its_builder_reads(key):
    read: set[str] = set()
    for changes in READING.get(key, [{}]):
        recording = RecordingConfig(RunConfig(strategy=key, **{**NEEDS.get(key, {}), **changes}))
        REGISTRY[key].build(recording, 50)  # type: ignore[arg-type]
        read |= recording.read
    assert read & set(registry.RULE_KEYS) == set(REGISTRY[key].keys)


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_a_rule_key_the_strategy_does_not_read_is_refused_naming_it(key):
    for rule_key, value in RULE_KEY_VALUES.items():
        if rule_key in REGISTRY[key].keys:
            continue
        with pytest.raises(ConfigError, match=f"^{rule_key} = .* would have no effect: {key} does not read it .a key of"):
            RunConfig(strategy=key, **NEEDS.get(key, {}), **{rule_key.replace("-", "_"): value})


#: where a key is read only under another key's value, that value (and what the run needs beside it)
READ_UNDER = {
    ("alpha-normec", "client-lr"): dict(local_steps=2),
    ("ef21", "compress-ratio"): dict(compress_k=0),
    ("ef21-norm", "compress-ratio"): dict(compress_k=0),
    ("ef21-sgdm-norm", "compress-ratio"): dict(compress_k=0),
    ("sign-vote", "sto-sign-bound"): dict(sign_compressor="sto-sign"),
    ("sign-vote", "clip"): dict(sign_compressor="dp-sign", noise_multiplier=1.0),
    ("sign-vote", "round-epsilon"): dict(sign_compressor="dp-sign", round_epsilon=50.0),
}
#: values that move a 2-round synthetic run: a clip below the updates' norm, and for dp-sign a clip
#: above the gradients' norm (below it the sign of clip(g) + z, z ~ clip, is the same for every clip)
#: and a round-epsilon from 50 (READ_UNDER: noise small enough for the signs to follow the gradient)
EFFECTIVE_VALUES = {**RULE_KEY_VALUES, "clip": 0.01, "sto-sign-bound": 0.01, "round-epsilon": 0.5}
EFFECTIVE_FOR = {("sign-vote", "clip"): 100.0}


@pytest.mark.parametrize("key, rule_key", [(key, rule_key) for key, spec in REGISTRY.items() for rule_key in spec.keys])
def test_every_key_a_strategy_reads_changes_its_trajectory(short_run, key, rule_key):
    """The other side of refusing the keys a strategy does not read: the ones it lists do something."""
    cfg = short_run(key, **READ_UNDER.get((key, rule_key), {}))
    value = EFFECTIVE_FOR.get((key, rule_key), EFFECTIVE_VALUES[rule_key])
    changed = cfg.replace(**{rule_key.replace("-", "_"): value})
    final = [run_inprocess(run)["test-loss"].iloc[-1] for run in (cfg, changed)]
    assert final[0] != final[1]


@pytest.mark.parametrize(
    "changes, key, why",
    [
        (dict(client_lr=0.1), "client-lr", "the step size of local-steps > 1"),
        (dict(strategy="ef21", compressor="identity", compress_k=3), "compress-k", "'identity' sends the whole vector"),
        (dict(strategy="ef21-norm", compressor="identity", compress_ratio=0.2), "compress-ratio", "'identity'"),
        (dict(strategy="ef21", compress_k=3, compress_ratio=0.2), "compress-ratio", "compress-k > 0 sets k"),
        (dict(strategy="sign-vote", sto_sign_bound=2.0), "sto-sign-bound", "'sto-sign' reads it"),
        (dict(strategy="sign-vote", sign_compressor="sto-sign", clip=0.5), "clip", "'dp-sign' reads it"),
    ],
)
def test_a_key_of_the_strategy_that_this_config_leaves_unread_is_refused(changes, key, why):
    with pytest.raises(ConfigError, match=f"^{key} = .* would have no effect: .* does not read it here: .*{why}"):
        RunConfig(**changes)


def test_those_keys_are_accepted_where_the_config_reads_them():
    RunConfig(local_steps=2, client_lr=0.1)
    RunConfig(strategy="ef21", compress_k=3)
    RunConfig(strategy="ef21", compress_ratio=0.2)
    RunConfig(strategy="sign-vote", sign_compressor="sto-sign", sto_sign_bound=2.0)
    RunConfig(strategy="sign-vote", sign_compressor="dp-sign", clip=0.5, round_epsilon=1.0)
    RunConfig(strategy="sign-vote", sign_compressor="dp-sign", clip=0.5, target_epsilon=1.0)


def test_a_new_strategy_is_one_registry_entry(monkeypatch, tiny_cfg):
    """A strategy nobody wrote before, added the way the registry's docstring says: config validation
    accepts its key, the factory builds it, both sides of a round run it."""
    spec = StrategySpec(
        key="normalized-mean-sgd",
        algorithm="the mean of normalized gradients",
        sends="`Norm_a(v_i)`",
        privacy_text="none",
        keys=("alpha",),
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
