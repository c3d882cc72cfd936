"""Central DP: Poisson cohorts, one Gaussian draw on the bounded sum, every client charged at rate q."""

import logging
import math
import random

import dp_accounting
import numpy as np
import pytest
import torch

from fl_dp.privacy_policy import message_bound, resolve_noise_multiplier, sensitivity
from fl_dp.central import BOUND_SAFETY, CentralGaussianSum, poisson_cohort, project_to_ball
from fl_dp.config import ConfigError, RunConfig
from fl_dp.registry import REGISTRY
from fl_dp.inprocess import InProcessFederation
from fl_dp.server import ServerCore
from fl_dp.privacy import MAX_NOISE_MULTIPLIER, Release, epsilon_of
from fl_dp.wire import decode


def central(tiny_cfg, **changes):
    base = dict(strategy="alpha-normec", privacy_model="central", server_lr=0.3, num_clients=8, clients_per_round=4)
    return tiny_cfg.replace(**{**base, **changes})


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("strategy, extra", [
    ("fedavg", {}),
    ("ef21", dict(server_lr=0.3, compress_k=2)),
    ("sign-vote", dict(server_lr=0.1, sign_compressor="dp-sign", round_epsilon=1.0)),
    ("dp-sgd", dict(target_epsilon=2.0, batch_size=16)),
    ("ef-sign", dict(server_lr=0.1)),
])
def test_central_is_refused_for_strategies_without_a_bounded_summable_message(tiny_cfg, strategy, extra):
    with pytest.raises(ConfigError, match="privacy-model"):
        tiny_cfg.replace(strategy=strategy, privacy_model="central", **extra)


def test_unknown_privacy_models_and_unsupported_strategies_name_the_key(tiny_cfg):
    with pytest.raises(ConfigError, match="unknown privacy-model 'trusted'"):
        tiny_cfg.replace(privacy_model="trusted")
    with pytest.raises(ConfigError, match="privacy-model 'distributed'"):
        tiny_cfg.replace(strategy="ef21", server_lr=0.3, privacy_model="distributed")
    assert tiny_cfg.replace(strategy="alpha-normec", privacy_model="distributed").privacy_model == "distributed"
    with pytest.raises(ConfigError, match="privacy-model must be of type"):
        RunConfig.from_flwr({"privacy-model": 1})


def test_a_cohort_larger_than_the_population_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match="clients-per-round"):
        central(tiny_cfg, clients_per_round=9)


@pytest.mark.parametrize("privacy_model", ["central", "distributed"])
@pytest.mark.parametrize("target", [1e-6, 0.005])
def test_a_target_epsilon_beyond_useful_noise_is_refused_before_round_one(tiny_cfg, target, privacy_model):
    cfg = central(tiny_cfg, target_epsilon=target, num_server_rounds=50, privacy_model=privacy_model)
    with pytest.raises(ConfigError, match="target-epsilon"):
        ServerCore(cfg)


def test_variants_belong_to_alpha_normec_and_bool_keys_are_strict(tiny_cfg):
    with pytest.raises(ConfigError, match="local-steps"):
        tiny_cfg.replace(strategy="clip21", server_lr=0.3, local_steps=3)
    with pytest.raises(ConfigError, match="server-normalize must be of type"):
        RunConfig.from_flwr({"server-normalize": "yes"})
    assert RunConfig.from_flwr({"server-normalize": True}).server_normalize is True


# ---------------------------------------------------------------- mechanism


def clip_of(strategy: str, clip: float) -> dict[str, float]:
    """``clip`` for a strategy that reads it (the others refuse it)."""
    return {"clip": clip} if "clip" in REGISTRY[strategy].keys else {}


def test_sensitivity_is_the_message_bound_under_add_remove_and_twice_it_under_replace(tiny_cfg):
    for strategy in ("alpha-normec", "clip21", "dp-fedavg", "dp-normalized-sgd"):
        cfg = central(tiny_cfg, strategy=strategy, **clip_of(strategy, 0.7))
        assert sensitivity(cfg) == message_bound(cfg)
        assert sensitivity(cfg.replace(privacy_model="local")) == 2 * message_bound(cfg)


def test_projection_enforces_the_bound_exactly_in_float32():
    for scale in (1.0 + 1e-7, 1.0 + 1.1e-6, 2.0, 1e30):
        v = torch.randn(10_000)
        v = v / torch.linalg.vector_norm(v) * scale
        projected = project_to_ball(v.float(), 1.0)
        assert projected.dtype == torch.float32
        assert float(torch.linalg.vector_norm(projected)) <= 1.0
    inside = torch.full((4,), 0.1)
    assert project_to_ball(inside, 1.0) is inside
    assert BOUND_SAFETY < 1e-4


def test_noise_is_drawn_once_on_the_sum_with_std_sigma_times_bound():
    mechanism = CentralGaussianSum(bound=0.5, noise_multiplier=1.3)
    messages = [torch.full((40_000,), 0.001) for _ in range(7)]
    noisy = mechanism(messages, 40_000, torch.Generator().manual_seed(1))
    noise = noisy - 0.007
    assert abs(float(noise.std()) / (1.3 * 0.5) - 1) < 0.02
    # a hostile message of norm 1e6 moves the sum by at most the bound
    quiet = CentralGaussianSum(bound=0.5, noise_multiplier=0.0)
    huge = torch.zeros(40_000)
    huge[0] = 1e6
    assert float(torch.linalg.vector_norm(quiet([huge], 40_000, torch.Generator()))) <= 0.5


def test_poisson_cohort_has_rate_q_and_varies_in_size():
    rng = random.Random(0)
    sizes = [len(poisson_cohort(list(range(200)), 0.1, rng)) for _ in range(500)]
    assert abs(np.mean(sizes) - 20) < 0.6
    assert min(sizes) < 15 and max(sizes) > 25


def test_clients_send_their_noiseless_bounded_message(tiny_cfg):
    cfg = central(tiny_cfg, target_epsilon=4.0)
    fed = InProcessFederation(cfg)
    arrays, config = fed.server.broadcast(1)
    assert config["dp-noise-multiplier"] == 0.0
    noiseless = InProcessFederation(cfg.replace(privacy_model="local", target_epsilon=0.0, noise_multiplier=0.0))
    for cid in ("client-0", "client-5"):
        sent, metrics, state = fed.clients[cid].train(arrays, config, {})
        reference, _, _ = noiseless.clients[cid].train(arrays, config, {})
        assert np.array_equal(sent["dense"], reference["dense"])
        assert float(torch.linalg.vector_norm(decode(sent, fed.server.dim))) < 1.0
        # no loss or other statistic leaves a client of a private run (only its example count, its
        # partition id and, from an empty error-feedback state, that it started empty); no client-side ledger
        assert set(metrics) == {"num-examples", "partition-id", "state-fresh"} and "privacy-ledger" not in state
        _, again, _ = fed.clients[cid].train(arrays, config, state)
        assert set(again) == {"num-examples", "partition-id"}


# ---------------------------------------------------------------- accounting


def test_every_connected_client_is_charged_at_rate_q_each_round_sampled_or_not(tiny_cfg):
    cfg = central(tiny_cfg, noise_multiplier=0.9, num_server_rounds=5)
    fed = InProcessFederation(cfg)
    cohorts = []
    for server_round in range(1, 6):
        row = fed.run_round(server_round)
        cohorts.append(row["sampled"])
    assert len(set(cohorts)) > 1  # Poisson: the cohort size varies
    expected = epsilon_of([Release(0.9, 0.5, 5)], cfg.delta)
    assert fed.server.ledger.epsilons() == {f"client-{i}": expected for i in range(8)}
    assert fed.server.rows[-1]["epsilon-max"] == pytest.approx(expected)


def _dp_accounting_epsilon(sigma, q, steps, delta):
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("target, rounds, num_clients, per_round", [(8.0, 300, 1000, 100), (2.0, 300, 1000, 100), (1.0, 100, 10_000, 100)])
def test_calibrated_central_noise_meets_the_target_by_an_independent_accountant(tiny_cfg, target, rounds, num_clients, per_round):
    cfg = tiny_cfg.replace(
        strategy="alpha-normec", server_lr=0.3, privacy_model="central", target_epsilon=target,
        num_server_rounds=rounds, num_clients=num_clients, clients_per_round=per_round,
    )
    sigma = resolve_noise_multiplier(cfg)
    reference = _dp_accounting_epsilon(sigma, per_round / num_clients, rounds, cfg.delta)
    assert reference <= target * 1.001
    assert reference >= target - 0.05  # calibrated, not merely safe
    assert epsilon_of([Release(sigma, per_round / num_clients, rounds)], cfg.delta) == pytest.approx(reference, rel=0.02)
    # amplification: local accounting of the same rounds needs far more noise
    assert sigma < resolve_noise_multiplier(cfg.replace(privacy_model="local")) / 3
    assert sigma < MAX_NOISE_MULTIPLIER


# ---------------------------------------------------------------- server rule


def test_an_empty_cohort_still_releases_noise_and_charges_everyone(tiny_cfg):
    cfg = central(tiny_cfg, noise_multiplier=1.0, num_clients=8, clients_per_round=1)
    core = ServerCore(cfg)
    x0 = core.x.clone()
    core.sample([f"client-{i}" for i in range(8)])
    row = core.aggregate(1, [])
    assert row["accepted"] == 0
    assert not torch.equal(core.x, x0)  # the noise moved G, and x with it
    assert len(core.ledger.epsilons()) == 8


@pytest.mark.parametrize("strategy", ["alpha-normec", "clip21", "dp-normalized-sgd", "dp-fedavg"])
def test_central_rule_without_noise_divides_by_the_expected_cohort(tiny_cfg, strategy):
    cfg = central(tiny_cfg, strategy=strategy, **clip_of(strategy, 10.0), num_clients=8, clients_per_round=4)
    fed = InProcessFederation(cfg)
    x0 = fed.server.x.clone()
    arrays, config = fed.server.broadcast(1)
    cohort = fed.server.sample(list(fed.clients))
    messages = [decode(fed.clients[c].train(arrays, config, {})[0], fed.server.dim) for c in cohort]
    fed2 = InProcessFederation(cfg)
    fed2.run_round(1)
    total = torch.stack(messages).sum(0) if messages else torch.zeros_like(x0)
    if strategy in ("alpha-normec", "clip21"):
        expected = x0 - cfg.server_lr * (cfg.beta / cfg.num_clients) * total
    elif strategy == "dp-normalized-sgd":
        expected = x0 - cfg.server_lr * total / cfg.clients_per_round
    else:
        expected = x0 + cfg.server_lr * total / cfg.clients_per_round
    assert torch.allclose(fed2.server.x, expected, atol=1e-6)


def test_a_run_is_reproducible_for_a_seed(tiny_cfg):
    cfg = central(tiny_cfg, target_epsilon=3.0, num_server_rounds=3)
    a = InProcessFederation(cfg).run()
    b = InProcessFederation(cfg).run()
    assert a["test-accuracy"].tolist() == b["test-accuracy"].tolist()
    c = InProcessFederation(cfg.replace(seed=1)).run()
    assert a["sampled"].tolist() != c["sampled"].tolist() or a["test-loss"].tolist() != c["test-loss"].tolist()


# ---------------------------------------------------------------- population scale


def test_a_thousand_clients_build_only_the_sampled_ones(tiny_cfg):
    cfg = tiny_cfg.replace(
        strategy="alpha-normec", server_lr=0.3, privacy_model="central", target_epsilon=8.0,
        num_clients=1000, clients_per_round=20, num_server_rounds=3, batch_size=0,
    )
    fed = InProcessFederation(cfg)
    history = fed.run()
    assert fed.clients.num_built == sum(1 for s in fed.states.values() if s) <= history["sampled"].sum()
    assert len(fed.server.ledger.epsilons()) == 1000
    assert history["epsilon-max"].iloc[-1] < 8.0


# ---------------------------------------------------------------- alpha-normec variants


def test_one_local_step_is_the_gradient_and_k_steps_follow_the_local_trajectory(tiny_cfg):
    from fl_dp.client import ClientCore
    from fl_dp.training import local_pseudo_gradient

    client = ClientCore(tiny_cfg, 0)
    x = torch.randn(client.objective.dim) * 0.1
    _, grad = client.objective.loss_and_grad(x)
    _, one = local_pseudo_gradient(client.objective, x, 1, 0.1, 0, None)
    assert torch.allclose(one, grad, atol=1e-6)
    y = x.clone()
    for _ in range(3):
        y = y - 0.1 * client.objective.loss_and_grad(y)[1]
    _, three = local_pseudo_gradient(client.objective, x, 3, 0.1, 0, None)
    assert torch.allclose(three, (x - y) / 0.3, atol=1e-5)


def test_fed_alpha_normec_and_server_normalization_run_under_central(tiny_cfg):
    base = central(tiny_cfg, noise_multiplier=0.5, num_server_rounds=4)
    for variant in (dict(local_steps=3, client_lr=0.1), dict(server_normalize=True)):
        fed = InProcessFederation(base.replace(**variant))
        x0 = fed.server.x.clone()
        fed.run_round(1)
        step = float(torch.linalg.vector_norm(fed.server.x - x0))
        if "server_normalize" in variant:
            assert step == pytest.approx(base.server_lr, rel=1e-5)
        assert math.isfinite(step) and step > 0


def test_ten_thousand_fashion_mnist_clients_in_process():
    cfg = RunConfig(
        strategy="alpha-normec", privacy_model="central", target_epsilon=4.0, dataset="fashion-mnist", model="logreg",
        num_clients=10_000, clients_per_round=100, num_server_rounds=2, batch_size=0, eval_samples=500, server_lr=0.5,
        results_dir="unused",
    )
    fed = InProcessFederation(cfg)
    history = fed.run()
    assert len(fed.server.ledger.epsilons()) == 10_000
    assert fed.clients.num_built <= history["sampled"].sum()
    assert all(len(fed.clients[c].objective.data) == 6 for c in ("client-0", "client-9999"))
    assert history["test-accuracy"].notna().all()


def test_fewer_connected_clients_than_num_clients_is_said_once_and_q_is_kept(tiny_cfg, caplog):
    cfg = central(tiny_cfg, noise_multiplier=1.0, num_clients=8, clients_per_round=4)
    core = ServerCore(cfg)
    with caplog.at_level(logging.WARNING, logger="fl_dp"):
        core.sample([f"client-{i}" for i in range(8)])
        assert "connected" not in caplog.text
        for _ in range(3):
            core.sample([f"client-{i}" for i in range(6)])
    assert caplog.text.count("6 of num-clients = 8 clients are connected: Poisson cohorts at q = 0.5 average 3 clients") == 1
    assert core.central.release(cfg.client_sample_rate).sample_rate == 0.5
