import pytest

from fl_dp.config import ConfigError, RunConfig
from fl_dp.server import ServerCore


def test_round_trip_through_flower_keys():
    cfg = RunConfig(strategy="clip21", clip=0.5, num_clients=20, clients_per_round=5)
    assert RunConfig.from_flwr(cfg.to_flwr()) == cfg
    assert "clients-per-round" in cfg.to_flwr()


def test_pyproject_defaults_are_a_valid_config():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    # flwr run --run-config can only override keys that pyproject.toml declares: all of them must be there
    assert set(app_config) == set(RunConfig().to_flwr())
    # the app's population is its federation's: plain `flwr run .` runs on Flower's default federation
    assert RunConfig.from_flwr(app_config) == RunConfig(num_clients=0, clients_per_round=0)


def test_a_population_of_zero_is_the_federations_size():
    app_default = RunConfig(num_clients=0, clients_per_round=0)
    assert app_default.for_federation(7) == RunConfig(num_clients=7, clients_per_round=7)
    assert RunConfig(num_clients=0, clients_per_round=3).for_federation(7).clients_per_round == 3
    assert RunConfig(num_clients=20, clients_per_round=0).for_federation(7) == RunConfig(num_clients=20, clients_per_round=20)
    with pytest.raises(ConfigError, match="num-clients = 0"):
        app_default.client_sample_rate
    with pytest.raises(ConfigError, match="outside one, set num-clients"):
        ServerCore(app_default.replace(dataset="synthetic", model="logreg"))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(strategy="fedprox"), "unknown strategy"),
        (dict(clients_per_round=11), "clients-per-round"),
        (dict(evaluation="federated", evaluation_clients=11), "evaluation-clients \\(11\\) > num-clients \\(10\\)"),
        (dict(alpha=0.0), "alpha must be positive"),
        (dict(alpha=-1.0), "alpha must be positive"),
        (dict(client_lr=0.0), "client-lr must be positive"),
        (dict(noise_multiplier=-0.5), "noise-multiplier must be >= 0"),
        (dict(dirichlet_alpha=0.0), "dirichlet-alpha"),
        (dict(delta=1.0), "delta"),
        (dict(dataset="imagenet"), "unknown dataset"),
        (dict(partitioner="shards"), "unknown partitioner"),
        (dict(compressor="bottom-k"), "unknown compressor"),
        (dict(strategy="fedavg", target_epsilon=3.0), "dp-fedavg"),
        (dict(strategy="ef21", noise_multiplier=1.0), "no privacy mechanism"),
        (dict(strategy="ef21", compress_ratio=0.0, compress_k=0), "set compress-k >= 1 or compress-ratio > 0"),
        (dict(strategy="sign-vote", sign_compressor="sign", target_epsilon=1.0), "only sign-compressor 'dp-sign'"),
        (dict(strategy="sign-vote", sign_compressor="dp-sign"), "dp-sign needs"),
        (dict(strategy="alpha-normec", round_epsilon=1.0), "round-epsilon"),
        (dict(sign_compressor="top-sign"), "unknown sign-compressor"),
        (dict(grad_noise="cauchy"), "unknown grad-noise"),
        (dict(grad_noise="student-t", grad_noise_kappa=2.5), "grad-noise-kappa"),
        # out-of-range values are refused even where their feature is off
        (dict(grad_noise_kappa=-1.0), "grad-noise-kappa must be in"),
        (dict(grad_noise_scale=0.0), "grad-noise-scale must be positive and finite"),
        (dict(secagg_survivors=-1.0), "secagg-survivors must be in"),
        (dict(secagg_bits=40), "secagg-bits must be in"),
        (dict(secagg_num_shares=2), "secagg-num-shares must be >= 3"),
        (dict(byzantine_fraction=0.5), "byzantine-fraction"),
        (dict(seed=2**63), "seed must be at most 2\\*\\*63 - 1"),
        (dict(strategy="dp-fedavg", target_epsilon=1e300), "target-epsilon 1e\\+300 is above 1e\\+06"),
        (dict(strategy="dp-sgd", target_epsilon=1e16), "target-epsilon 1e\\+16 is above"),
        (dict(strategy="sign-vote", sign_compressor="dp-sign", round_epsilon=1e8), "round-epsilon 1e\\+08 is above 1e\\+06"),
        # inf in float32: every message was NaN, every round skipped
        (dict(regularizer_lambda=1e39), "regularizer-lambda 1e\\+39 is above the largest float32"),
        (dict(strategy="dp-fedavg", clip=1e300, noise_multiplier=1.0), "clip 1e\\+300 is above the largest float32"),
        (dict(server_lr=3.5e38), "server-lr 3.5e\\+38 is above the largest float32"),
        (dict(strategy="fedavg", client_lr=1e39), "client-lr 1e\\+39 is above the largest float32"),
        # below 1e-154 sigma**2 underflows: every client failed its accounting, every round
        (dict(noise_multiplier=1e-300), "noise-multiplier 1e-300 is below 0.0001"),
        (dict(noise_multiplier=5e-5), "noise-multiplier 5e-05 is below 0.0001"),
        (dict(run_name="../../etc"), "run-name must be a plain name"),
        (dict(run_name="a/b"), "run-name must be a plain name"),
        (dict(run_name=".hidden"), "run-name must be a plain name"),
        (dict(run_name="x" * 101), "run-name must be a plain name"),
        (dict(run_name="run 1"), "run-name must be a plain name"),
        (dict(strategy="dp-fedavg", target_epsilon=8.0, delta=0.1), "delta 0.1 is not below 1/num-clients = 0.1"),
        (dict(strategy="alpha-normec", noise_multiplier=1.0, delta=0.5, privacy_model="central"), "delta 0.5 is not below"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


@pytest.mark.parametrize(
    "changes, key, why",
    [
        (dict(dirichlet_alpha=0.3), "dirichlet-alpha", "only partitioner 'dirichlet'"),
        (dict(partitioner="dirichlet", pathological_classes=3), "pathological-classes", "only partitioner 'pathological'"),
        (dict(partitioner="pathological", shard_count=3), "shard-count", "only partitioner 'shard'"),
        (dict(grad_noise_kappa=1.8), "grad-noise-kappa", "grad-noise is 'none'"),
        (dict(grad_noise_scale=2.0), "grad-noise-scale", "grad-noise is 'none'"),
        (dict(byzantine_attack="large"), "byzantine-attack", "byzantine-fraction is 0"),
        (dict(aggregator="median", trim_fraction=0.2), "trim-fraction", "only aggregator 'trimmed-mean'"),
        (dict(held_out_fraction=0.3), "held-out-fraction", "only evaluation 'federated'"),
        (dict(evaluation_clients=3), "evaluation-clients", "only evaluation 'federated'"),
        (dict(privacy_model="central", noise_multiplier=1.0, secagg_bits=16), "secagg-bits", "only privacy-model 'distributed'"),
        (dict(secagg_survivors=0.5), "secagg-survivors", "only privacy-model 'distributed'"),
        (dict(secagg_num_shares=4), "secagg-num-shares", "only privacy-model 'distributed'"),
        (dict(strategy="fedavg", delta=1e-6), "delta", "the run is not private"),
    ],
)
def test_a_key_this_config_does_not_read_is_refused_naming_it(changes, key, why):
    with pytest.raises(ConfigError, match=f"^{key} = .* would have no effect: {why}.*; leave it at its default"):
        RunConfig(**changes)


def test_those_keys_are_accepted_where_they_are_read():
    RunConfig(partitioner="dirichlet", dirichlet_alpha=0.3)
    RunConfig(partitioner="pathological", pathological_classes=3)
    RunConfig(partitioner="shard", shard_count=3)
    RunConfig(grad_noise="student-t", grad_noise_kappa=1.8, grad_noise_scale=2.0)
    RunConfig(byzantine_fraction=0.1, byzantine_attack="large")
    RunConfig(aggregator="trimmed-mean", trim_fraction=0.2)
    RunConfig(evaluation="federated", evaluation_clients=3, held_out_fraction=0.3)
    RunConfig(privacy_model="distributed", noise_multiplier=1.0, secagg_bits=16, secagg_survivors=0.5, secagg_num_shares=4)
    RunConfig(strategy="dp-fedavg", target_epsilon=1.0, delta=1e-6)


@pytest.mark.parametrize(
    "changes",
    [dict(target_epsilon=2.0, noise_multiplier=1.0), dict(strategy="sign-vote", sign_compressor="dp-sign", round_epsilon=1.0, target_epsilon=2.0)],
)
def test_two_keys_that_each_set_the_noise_are_refused(changes):
    with pytest.raises(ConfigError, match="are both set: one of them sets the noise"):
        RunConfig(**changes)


def test_a_delta_below_one_over_the_population_is_accepted():
    """Client-level guarantees only: a sample-level one (dp-sgd) counts a client's examples, not the clients."""
    RunConfig(strategy="dp-fedavg", target_epsilon=8.0, delta=0.099)
    RunConfig(strategy="dp-sgd", target_epsilon=8.0, delta=0.2, batch_size=16)
    with pytest.raises(ConfigError, match="delta = 0.5 would have no effect: the run is not private"):
        RunConfig(strategy="fedavg", delta=0.5)
    RunConfig(strategy="dp-fedavg", target_epsilon=8.0, delta=0.4, num_clients=0, clients_per_round=0)  # not known yet


def test_flower_values_are_type_checked_and_unknown_keys_refused():
    assert RunConfig.from_flwr({"num-server-rounds": 4.0}).num_server_rounds == 4
    assert RunConfig.from_flwr({"alpha": 1}).alpha == 1.0
    with pytest.raises(ConfigError, match="num-server-rounds must be of type"):
        RunConfig.from_flwr({"num-server-rounds": 2.5})
    with pytest.raises(ConfigError, match="unknown run-config keys: lerning-rate"):
        RunConfig.from_flwr({"lerning-rate": 0.1})
    with pytest.raises(ConfigError, match="kebab-case: num_clients \\(the key is num-clients\\)"):
        RunConfig.from_flwr({"num-clients": 10, "num_clients": 5})


def test_wrong_types_from_python_raise_config_errors_naming_the_key():
    import dataclasses
    import math

    for field in dataclasses.fields(RunConfig):
        key = field.name.replace("_", "-")
        for value in ("ten", None, [1], {"a": 1}, True, math.nan, math.inf, b"x"):
            if field.type == "bool" and isinstance(value, bool):
                continue
            if field.type == "str" and isinstance(value, str):
                continue
            with pytest.raises(ConfigError, match=key):
                RunConfig(**{field.name: value})
    assert RunConfig(alpha=1).alpha == 1.0 and isinstance(RunConfig(alpha=1).alpha, float)
    assert RunConfig(num_clients=10.0).num_clients == 10


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(strategy="ef21", server_lr=0.1, compressor="rand-k-unbiased"), "not contractive"),
        (dict(strategy="ef21-norm", server_lr=0.1, compressor="rand-k-unbiased"), "not contractive"),
        (dict(strategy="dp-fedavg", noise_multiplier=1e39), "noise-multiplier"),
    ],
)
def test_configs_the_theory_rules_out_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(dataset="breast-cancer", model="cnn"), "model 'cnn' does not fit"),
        (dict(dataset="synthetic", num_clients=5000, clients_per_round=10), "num-clients 5000"),
        (dict(dataset="synthetic", max_train_samples=20, num_clients=30, clients_per_round=3), "num-clients 30"),
        (dict(dataset="synthetic", model="logreg", strategy="dp-fedavg", target_epsilon=1e-6), "target-epsilon"),
    ],
)
def test_preflight_refuses_configs_that_cannot_run_before_any_client_trains(changes, message):
    from fl_dp.server import ServerCore

    cfg = RunConfig(eval_samples=0, **{"model": "logreg", **changes})
    with pytest.raises(ConfigError, match=message):
        ServerCore(cfg)
