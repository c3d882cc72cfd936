import pytest

from fl_dp.config import ConfigError, RunConfig


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
    assert RunConfig.from_flwr(app_config) == RunConfig()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(strategy="fedprox"), "unknown strategy"),
        (dict(clients_per_round=11), "clients-per-round"),
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
        (dict(compress_ratio=0.0, compress_k=0), "compress-k"),
        (dict(strategy="sign-vote", sign_compressor="sign", target_epsilon=1.0), "only sign-compressor 'dp-sign'"),
        (dict(strategy="sign-vote", sign_compressor="dp-sign"), "dp-sign needs"),
        (dict(strategy="alpha-normec", round_epsilon=1.0), "round-epsilon"),
        (dict(sign_compressor="top-sign"), "unknown sign-compressor"),
        (dict(grad_noise="cauchy"), "unknown grad-noise"),
        (dict(grad_noise="student-t", grad_noise_kappa=2.5), "grad-noise-kappa"),
        (dict(byzantine_fraction=0.5), "byzantine-fraction"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes)


def test_flower_values_are_type_checked_and_unknown_keys_refused():
    assert RunConfig.from_flwr({"num-server-rounds": 4.0}).num_server_rounds == 4
    assert RunConfig.from_flwr({"alpha": 1}).alpha == 1.0
    with pytest.raises(ConfigError, match="num-server-rounds must be of type"):
        RunConfig.from_flwr({"num-server-rounds": 2.5})
    with pytest.raises(ConfigError, match="unknown run-config keys: lerning-rate"):
        RunConfig.from_flwr({"lerning-rate": 0.1})
