import math

import numpy as np
import pytest
import torch

from fl_dp.registry import build_algorithm
from fl_dp.config import RunConfig
from fl_dp.inprocess import InProcessFederation
from fl_dp.wire import Reply
from fl_dp.privacy import Release, epsilon_of
from fl_dp.privacy import analytic_gaussian_delta, analytic_gaussian_noise_multiplier
from fl_dp.signs import dp_sign, hard_sign, majority_vote, scaled_sign, stochastic_sign
from fl_dp.wire import SignVector, decode, encode


def test_sto_sign_is_unbiased_up_to_the_scale_b():
    v = torch.tensor([-0.9, -0.3, 0.0, 0.2, 0.7, 1.0])
    generator = torch.Generator().manual_seed(0)
    draws = 40000
    mean = torch.stack([stochastic_sign(v, 1.0, generator) for _ in range(draws)]).mean(0)
    # std of each coordinate's mean is at most 1 / sqrt(draws)
    assert torch.all((mean - v).abs() < 5 / math.sqrt(draws))
    clamped = torch.stack([stochastic_sign(torch.tensor([3.0, -3.0]), 1.0, generator) for _ in range(100)])
    assert torch.all(clamped[:, 0] == 1) and torch.all(clamped[:, 1] == -1)


def test_dp_sign_is_sign_of_gaussian_perturbation_in_distribution():
    v = torch.tensor([-1.0, -0.25, 0.0, 0.5, 2.0])
    sigma = 0.8
    generator = torch.Generator().manual_seed(1)
    draws = 40000
    frequency = (torch.stack([dp_sign(v, sigma, generator) for _ in range(draws)]) > 0).double().mean(0)
    phi = 0.5 * (1 + torch.erf(v.double() / (sigma * math.sqrt(2))))
    assert torch.all((frequency - phi).abs() < 5 * 0.5 / math.sqrt(draws))


def test_majority_vote_and_its_tie_rule():
    votes = [torch.tensor([1.0, 1, -1, 1]), torch.tensor([1.0, -1, -1, -1]), torch.tensor([-1.0, 1, -1, 1])]
    assert torch.equal(majority_vote(votes), torch.tensor([1.0, 1, -1, 1]))
    assert torch.equal(majority_vote(votes[:2]), torch.tensor([1.0, 0, -1, 0]))  # ties give 0
    assert torch.equal(hard_sign(torch.tensor([0.0, -0.0, 2.0])), torch.tensor([1.0, 1.0, 1.0]))


def test_scaled_signs_round_trip_on_the_wire_at_one_bit_plus_one_float():
    p = torch.tensor([0.5, -1.5, 2.0, -0.1, 0.0, 3.0, -2.0, 1.0, 0.4])
    scale, signs = scaled_sign(p)
    assert scale == pytest.approx(float(p.abs().mean()))
    arrays = encode(SignVector(signs, scale))
    assert sum(a.nbytes for a in arrays.values()) == 2 + 4
    assert torch.allclose(decode(arrays, 9), signs * scale)


def _sign_cfg(tiny_cfg, **changes):
    return tiny_cfg.replace(strategy="sign-vote", server_lr=0.01, num_clients=5, clients_per_round=5, **changes)


def test_sign_vote_messages_are_bits_and_the_server_steps_by_the_vote(tiny_cfg):
    fed = InProcessFederation(_sign_cfg(tiny_cfg))
    x = fed.server.x.clone()
    row = fed.run_round(1)
    assert row["bytes-up"] == 5 * math.ceil(fed.server.dim / 8)
    step = (x - fed.server.x) / 0.01
    assert set(step.round().tolist()) <= {-1.0, 0.0, 1.0}


def test_the_vote_ignores_malformed_replies(tiny_cfg):
    fed = InProcessFederation(_sign_cfg(tiny_cfg))
    arrays, config = fed.server.broadcast(1)
    replies = [Reply(cid, *fed.clients[cid].train(arrays, config, {})[:2]) for cid in list(fed.clients)[:3]]
    bad = [
        Reply("short", {"signs": replies[0].arrays["signs"][:-1]}, replies[0].metrics),
        Reply("wrong-dtype", {"signs": replies[0].arrays["signs"].astype(np.float32)}, replies[0].metrics),
    ]
    clean = InProcessFederation(_sign_cfg(tiny_cfg))
    for federation in (clean, fed):
        federation.server.sample(list(federation.clients))
    clean.server.aggregate(1, replies)
    row = fed.server.aggregate(1, replies + bad)
    assert row["rejected"] == 2 and torch.equal(fed.server.x, clean.server.x)


def test_dp_sign_composes_per_round_epsilon_in_the_ledger(tiny_cfg):
    cfg = _sign_cfg(tiny_cfg, sign_compressor="dp-sign", round_epsilon=0.5, clip=1.0, num_server_rounds=4)
    history = InProcessFederation(cfg).run()
    sigma_over_delta2 = analytic_gaussian_noise_multiplier(0.5, cfg.delta)
    for t, eps in enumerate(history["epsilon-max"], start=1):
        assert eps == pytest.approx(epsilon_of([Release(sigma_over_delta2, 1.0, t)], cfg.delta))
    algorithm = build_algorithm(cfg, 10)
    assert algorithm.mechanism.std == pytest.approx(sigma_over_delta2 * 2.0)  # Delta2 = 2 * clip


@pytest.mark.parametrize("round_epsilon", [1e-3, 1e-300])
def test_a_round_epsilon_that_needs_noise_beyond_use_is_refused_before_round_one(tiny_cfg, round_epsilon):
    """As a target-epsilon is: dp-sign's round-epsilon 0.001 needed sigma 1724 (sign bits of pure
    noise), and below it the calibration saturates near 1 / (delta sqrt(2 pi))."""
    from fl_dp.config import ConfigError
    from fl_dp.privacy import MAX_NOISE_MULTIPLIER

    assert analytic_gaussian_delta(MAX_NOISE_MULTIPLIER, 1e-3) > tiny_cfg.delta
    cfg = _sign_cfg(tiny_cfg, sign_compressor="dp-sign", round_epsilon=round_epsilon, clip=1.0)
    with pytest.raises(ConfigError, match=f"round-epsilon {round_epsilon} cannot be reached with useful noise"):
        InProcessFederation(cfg)
    assert analytic_gaussian_noise_multiplier(0.01, tiny_cfg.delta) < MAX_NOISE_MULTIPLIER  # 0.01 still runs


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0, 5.0, 10.0, 30.0])
def test_dp_sign_round_epsilon_holds_for_every_epsilon(eps):
    """The analytic Gaussian mechanism's delta at the calibrated sigma is delta, and just below
    sigma it exceeds it; checked against the privacy profile integrated numerically."""
    from scipy import integrate, stats

    delta = 1e-5
    sigma = analytic_gaussian_noise_multiplier(eps, delta)
    assert analytic_gaussian_delta(sigma, eps) <= delta < analytic_gaussian_delta(sigma * 0.999, eps)

    def profile(s):  # delta(eps) = int max(0, p(x) - e^eps q(x)) dx, p = N(0, s^2), q = N(1, s^2)
        f = lambda x: max(0.0, stats.norm.pdf(x, 0, s) - math.exp(eps) * stats.norm.pdf(x, 1, s))
        crossing = 0.5 - eps * s * s  # p > e^eps q exactly left of this point
        return integrate.quad(f, crossing - 40 * s, crossing, limit=200)[0]

    assert profile(sigma) == pytest.approx(delta, rel=1e-3)
    classical = math.sqrt(2 * math.log(1.25 / delta)) / eps
    if eps >= 10:
        assert profile(classical) > 1.1 * delta  # the classical formula is not (eps, delta)-DP there
    if eps <= 0.5:
        assert sigma < classical  # and is loose where it holds


def test_ef_sign_keeps_the_compression_error(tiny_cfg):
    fed = InProcessFederation(tiny_cfg.replace(strategy="ef-sign", server_lr=0.1))
    x0 = fed.server.x.clone()
    fed.run_round(1)
    _, grad = fed.clients["client-0"].objective.loss_and_grad(x0)
    p = 0.1 * grad
    scale, signs = scaled_sign(p)
    assert torch.allclose(fed.states["client-0"]["e"], p - scale * signs, atol=1e-6)


def test_mean_sgd_is_plain_distributed_sgd(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="mean-sgd", server_lr=0.5)
    fed = InProcessFederation(cfg)
    x = fed.server.x.clone()
    fed.run_round(1)
    grad = torch.stack([c.objective.loss_and_grad(x)[1] for c in fed.clients.values()]).mean(0)
    assert torch.allclose(fed.server.x, x - 0.5 * grad, atol=1e-6)
