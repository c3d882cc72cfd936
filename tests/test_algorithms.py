"""Update rules against hand computations and against reference loops written from ALGORITHMS.md."""

import math

import pytest
import torch

from fl_dp.compressors import TopK
from fl_dp.config import ConfigError, RunConfig
from fl_dp.data import ArrayDataset
from fl_dp.inprocess import InProcessFederation
from fl_dp.mechanisms import LocalGaussianNoise
from fl_dp.privacy import calibrate_noise_multiplier
from fl_dp.privacy_policy import local_postprocessor, resolve_noise_multiplier, sensitivity
from fl_dp.registry import REGISTRY, build_algorithm
from fl_dp.rules import ClientTask, alpha_normec, ef21


class Quadratic:
    """f_i(x) = 0.5 ||x - b||^2, gradient x - b: a stand-in for Objective with known gradients."""

    def __init__(self, b: torch.Tensor) -> None:
        self.b = b
        self.data = ArrayDataset(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), 2)

    def stochastic_gradient(self, x, batch_size, generator):
        return float(0.5 * torch.sum((x - self.b) ** 2)), x - self.b


def _task(x, state, objective, seed, server_round=1):
    return ClientTask(x=x, state=state, objective=objective, generator=torch.Generator().manual_seed(seed), server_round=server_round)


def _sent(algorithm, noise, task):
    """The rule's update, then the local-DP post-processor on its message (as a client does)."""
    update = algorithm.client_update(task)
    message, release = noise(update.message, task.generator)
    return update, message, release


def test_alpha_normec_two_clients_d3_by_hand():
    """Two rounds of alpha-NormEC, alpha = 1, beta = 0.5, gamma = 0.1, fixed noise."""
    b1, b2 = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    sigma = 0.2
    algorithm = alpha_normec(alpha=1.0, server_lr=0.1, num_clients=2, batch_size=0, beta=0.5)
    noise = LocalGaussianNoise(noise_multiplier=sigma / 2.0, bound=1.0)  # sensitivity 2: std sigma
    x = torch.zeros(3)
    server_state = algorithm.init_server_state(3)
    # round 1 at x(1) = x(0) = 0: v1 = -b1 (norm 5), v2 = -b2 (norm 1), g = 0
    u1, m1, _ = _sent(algorithm, noise, _task(x, {}, Quadratic(b1), seed=11))
    u2, m2, _ = _sent(algorithm, noise, _task(x, {}, Quadratic(b2), seed=12))
    d1 = torch.tensor([-3.0, 0.0, -4.0]) / 6.0
    d2 = torch.tensor([0.0, -1.0, 0.0]) / 2.0
    z1 = torch.randn(3, generator=torch.Generator().manual_seed(11)) * sigma
    z2 = torch.randn(3, generator=torch.Generator().manual_seed(12)) * sigma
    assert torch.allclose(u1.state["g"], 0.5 * d1) and torch.allclose(u2.state["g"], 0.5 * d2)
    assert torch.allclose(m1, d1 + z1) and torch.allclose(m2, d2 + z2)
    x = algorithm.server_update(x, server_state, [m1, m2], [1.0, 1.0])
    G1 = 0.5 / 2 * (d1 + z1 + d2 + z2)
    assert torch.allclose(server_state["G"], G1) and torch.allclose(x, -0.1 * G1)
    # round 2: D_i = Norm_1(v_i - g_i) with v_i = x - b_i
    u1b, _, release = _sent(algorithm, noise, _task(x, u1.state, Quadratic(b1), seed=21))
    r = x - b1 - 0.5 * d1
    d1b = r / (1.0 + torch.linalg.vector_norm(r))
    assert torch.allclose(u1b.state["g"], 0.5 * d1 + 0.5 * d1b, atol=1e-6)
    assert release.noise_multiplier == pytest.approx(0.1)


def test_sent_increment_minus_noise_is_inside_the_unit_ball():
    """Same generator seed with and without noise: the difference is exactly the noise."""
    torch.manual_seed(3)
    for trial in range(200):
        scale = 10.0 ** torch.randint(-3, 4, ()).item()
        b = torch.randn(50) * scale
        state = {"g": torch.randn(50) * scale}
        x = torch.randn(50)
        alpha = 10.0 ** torch.randint(-3, 2, ()).item()
        rule = alpha_normec(alpha=alpha, server_lr=1.0, num_clients=1, batch_size=0)
        noisy, clean = LocalGaussianNoise(noise_multiplier=2.5, bound=1.0), LocalGaussianNoise(noise_multiplier=0.0, bound=1.0)
        sent = _sent(rule, noisy, _task(x, state, Quadratic(b), seed=trial))[1]
        increment = _sent(rule, clean, _task(x, state, Quadratic(b), seed=trial))[1]
        noise = torch.randn(50, generator=torch.Generator().manual_seed(trial)) * 5.0
        assert torch.allclose(sent - noise, increment, atol=1e-4)
        assert torch.linalg.vector_norm(increment) < 1


def _norm(v, alpha):
    return v / (alpha + torch.linalg.vector_norm(v))


def _clip(v, tau):
    norm = torch.linalg.vector_norm(v)
    return v if norm <= tau else v * (tau / norm)


def _top_k(v, k):
    kept = torch.zeros_like(v)
    index = torch.topk(v.abs(), k).indices
    kept[index] = v[index]
    return kept


def _grad(objective, x):
    return objective.loss_and_grad(x)[1]


# Reference loops written from ../shared/notes/ALGORITHMS.md alone (full batches, no noise, every
# client every round): each takes the clients' objectives, x(0) and the config, and returns x(t)
# after each round t >= 1.


def _reference_error_compensation(objectives, x, cfg, increment, normalized=False):
    """alpha-NormEC (increment = beta * Norm_a) and Clip21 (increment = clip_tau): g_i(0) = 0;
    ``normalized``: the server step along G / ||G|| (the alpha-NormEC paper's private variant)."""
    n, G = len(objectives), torch.zeros_like(x)
    g = [torch.zeros_like(x) for _ in objectives]

    def step(x):
        norm = torch.linalg.vector_norm(G)
        return x - cfg.server_lr * (G / norm if normalized and norm > 0 else G)

    trajectory = []
    for _ in range(cfg.num_server_rounds):
        x = step(x)
        for i, objective in enumerate(objectives):
            D = increment(_grad(objective, x) - g[i])
            g[i] = g[i] + D
            G = G + D / n
        trajectory.append(step(x))
    return trajectory


def _reference_ef21(objectives, x, cfg, k=None, normalized=False, eta=None):
    """EF21 / ||EF21|| (step g0 / sqrt(T + 1) along G / ||G||) / ||EF21-SGDM|| (momentum eta):
    g_i(0) = m_i(0) = grad f_i(x0), G(0) = their mean."""
    n, T = len(objectives), cfg.num_server_rounds
    lr = cfg.server_lr / math.sqrt(T + 1) if normalized else cfg.server_lr
    g = [_grad(objective, x) for objective in objectives]
    m = [gi.clone() for gi in g]
    G = sum(g) / n
    trajectory = []
    for t in range(T):
        if t > 0:
            for i, objective in enumerate(objectives):
                v = _grad(objective, x)
                if eta is not None:
                    m[i] = (1 - eta) * m[i] + eta * v
                    v = m[i]
                c = v - g[i] if k is None else _top_k(v - g[i], k)
                g[i] = g[i] + c
                G = G + c / n
        x = x - lr * (G / torch.linalg.vector_norm(G) if normalized else G)
        trajectory.append(x)
    return trajectory


def _reference_without_error_compensation(objectives, x, cfg):
    """x -= g * mean_i Norm_a(grad f_i(x))."""
    trajectory = []
    for _ in range(cfg.num_server_rounds):
        x = x - cfg.server_lr * sum(_norm(_grad(o, x), cfg.alpha) for o in objectives) / len(objectives)
        trajectory.append(x)
    return trajectory


def _reference_majority_vote(objectives, x, cfg):
    """x -= eta * sign(sum_i sign(grad f_i(x))); an even vote gives 0."""
    trajectory = []
    for _ in range(cfg.num_server_rounds):
        x = x - cfg.server_lr * torch.sign(sum(torch.sign(_grad(o, x)) for o in objectives))
        trajectory.append(x)
    return trajectory


def _reference_ef_sign(objectives, x, cfg):
    """EF-SignSGD (Karimireddy et al. 2019): p_i = lr * grad + e_i, send ||p_i||_1 / d * sign(p_i)."""
    e = [torch.zeros_like(x) for _ in objectives]
    trajectory = []
    for _ in range(cfg.num_server_rounds):
        sent = []
        for i, objective in enumerate(objectives):
            p = cfg.server_lr * _grad(objective, x) + e[i]
            sent.append(p.abs().sum() / p.numel() * torch.sign(p))
            e[i] = p - sent[-1]
        x = x - sum(sent) / len(sent)
        trajectory.append(x)
    return trajectory


def _reference_mean_sgd(objectives, x, cfg):
    """x -= g * mean_i grad f_i(x)."""
    trajectory = []
    for _ in range(cfg.num_server_rounds):
        x = x - cfg.server_lr * sum(_grad(o, x) for o in objectives) / len(objectives)
        trajectory.append(x)
    return trajectory


def _reference_fedavg(objectives, x, cfg, clip=None):
    """local_epochs full-batch heavy-ball steps per client; the example-weighted mean of x_i - x,
    or with ``clip`` (DP-FedAvg) the plain mean of the clipped x_i - x."""
    trajectory = []
    for _ in range(cfg.num_server_rounds):
        deltas, sizes = [], []
        for objective in objectives:
            y, velocity = x.clone(), torch.zeros_like(x)
            for _ in range(cfg.local_epochs):
                velocity = cfg.momentum * velocity + _grad(objective, y)
                y = y - cfg.client_lr * velocity
            deltas.append(y - x if clip is None else _clip(y - x, clip))
            sizes.append(len(objective.data) if clip is None else 1)
        x = x + cfg.server_lr * sum(s * d for s, d in zip(sizes, deltas)) / sum(sizes)
        trajectory.append(x)
    return trajectory


REFERENCE_LOOPS = {
    "alpha-normec": (
        dict(alpha=0.5, beta=0.3, server_lr=0.3),
        lambda o, x, cfg: _reference_error_compensation(o, x, cfg, lambda v: cfg.beta * _norm(v, cfg.alpha)),
    ),
    "clip21": (
        dict(clip=0.05, server_lr=0.5),
        lambda o, x, cfg: _reference_error_compensation(o, x, cfg, lambda v: _clip(v, cfg.clip)),
    ),
    "dp-normalized-sgd": (dict(alpha=0.1, server_lr=0.3), _reference_without_error_compensation),
    "ef21": (dict(compressor="top-k", compress_k=3, server_lr=0.5), lambda o, x, cfg: _reference_ef21(o, x, cfg, k=3)),
    "ef21-norm": (
        dict(compressor="top-k", compress_k=3, server_lr=1.0),
        lambda o, x, cfg: _reference_ef21(o, x, cfg, k=3, normalized=True),
    ),
    "ef21-sgdm-norm": (
        dict(compressor="top-k", compress_k=3, server_lr=1.0, sgdm_eta=0.3),
        lambda o, x, cfg: _reference_ef21(o, x, cfg, k=3, normalized=True, eta=0.3),
    ),
    "sign-vote": (dict(sign_compressor="sign", server_lr=0.01), _reference_majority_vote),
    "ef-sign": (dict(server_lr=0.3), _reference_ef_sign),
    "mean-sgd": (dict(server_lr=0.3), _reference_mean_sgd),
    "fedavg": (dict(client_lr=0.2, local_epochs=3, momentum=0.9, server_lr=0.7, partitioner="linear"), _reference_fedavg),
    "dp-fedavg": (
        dict(client_lr=0.2, local_epochs=3, clip=0.05, server_lr=0.7, partitioner="linear"),
        lambda o, x, cfg: _reference_fedavg(o, x, cfg, clip=cfg.clip),
    ),
}


@pytest.mark.parametrize("strategy", sorted(REFERENCE_LOOPS))
def test_deterministic_rules_follow_their_reference_loop_for_eight_rounds(tiny_cfg, strategy):
    """Every rule that is deterministic at full batch and zero noise, against its loop above."""
    extra, reference = REFERENCE_LOOPS[strategy]
    cfg = tiny_cfg.replace(strategy=strategy, num_server_rounds=8, **extra)
    fed = InProcessFederation(cfg)
    objectives = [fed.clients[f"client-{i}"].objective for i in range(cfg.num_clients)]
    expected = reference(objectives, fed.server.x.clone(), cfg)
    moved = 0.0
    for server_round, x in enumerate(expected, start=1):
        fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-5), f"round {server_round}"
        moved = max(moved, float(torch.linalg.vector_norm(x - expected[0])))
    assert moved > 1e-3  # the trajectory goes somewhere: equal by moving, not by standing still


def test_the_server_normalized_alpha_normec_follows_its_reference_loop(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="alpha-normec", alpha=0.5, beta=0.3, server_lr=0.1, server_normalize=True, num_server_rounds=8)
    fed = InProcessFederation(cfg)
    objectives = [fed.clients[f"client-{i}"].objective for i in range(cfg.num_clients)]
    increment = lambda v: cfg.beta * _norm(v, cfg.alpha)  # noqa: E731
    expected = _reference_error_compensation(objectives, fed.server.x.clone(), cfg, increment, normalized=True)
    for server_round, x in enumerate(expected, start=1):
        fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-5), f"round {server_round}"
    # each step has length server-lr exactly
    assert float(torch.linalg.vector_norm(expected[1] - expected[0])) == pytest.approx(0.1, rel=1e-5)


def test_the_reference_loops_cover_every_rule_without_noise_or_sampling():
    """A strategy added to the registry either gets a reference loop or is one of these."""
    stochastic = {"dp-sgd", "dp-sgd-rs"}  # noise and Poisson batches in every round (tests/test_dpsgd.py)
    assert set(REFERENCE_LOOPS) | stochastic == set(REGISTRY)


def test_ef21_with_identity_compressor_is_gradient_descent(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="ef21", compressor="identity", server_lr=0.5, num_server_rounds=8)
    fed = InProcessFederation(cfg)
    clients = [c.objective for c in fed.clients.values()]
    x = fed.server.x.clone()
    # round 1 sends g_i(0) = grad f_i(x0) dense, G(0) = their mean, then x(1) = x(0) - gamma G(0)
    for server_round in range(1, 9):
        full_grad = torch.stack([c.loss_and_grad(x)[1] for c in clients]).mean(0)
        x = x - 0.5 * full_grad
        fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-6)


def test_ef21_norm_takes_normalised_steps_of_gamma0_over_sqrt_T(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="ef21-norm", compressor="top-k", compress_k=2, server_lr=1.0, num_server_rounds=3)
    fed = InProcessFederation(cfg)
    before = fed.server.x.clone()
    fed.run_round(1)
    assert torch.linalg.vector_norm(fed.server.x - before) == pytest.approx(1.0 / math.sqrt(4), rel=1e-5)
    assert fed.server.rows[-1]["bytes-up"] == 4 * 21 * 4  # round 1: dense g_i(0)
    fed.run_round(2)
    assert fed.server.rows[-1]["bytes-up"] == 4 * 2 * 8  # 4 clients, top-2 values + indices


def test_partial_participation_keeps_skipped_clients_state_and_server_invariant(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="clip21", clip=0.05, server_lr=0.5, clients_per_round=2, num_server_rounds=6)
    fed = InProcessFederation(cfg)
    seen_states = {}
    for server_round in range(1, 7):
        before = {cid: {k: v.clone() for k, v in s.items()} for cid, s in fed.states.items()}
        fed.run_round(server_round)
        for cid, state in fed.states.items():
            if before[cid] and not torch.equal(before[cid]["g"], state["g"]):
                seen_states[cid] = True
        # G = (1/n) sum_i g_i holds with partial participation (noiseless)
        g_sum = sum(s["g"] for s in fed.states.values() if s)
        assert torch.allclose(fed.server.state["G"], g_sum / cfg.num_clients, atol=1e-6)
    assert fed.server.rows[0]["sampled"] == 2
    assert len(seen_states) >= 2  # some clients updated a state kept from an earlier round


def test_dp_normalized_sgd_has_no_error_feedback_state(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="dp-normalized-sgd", server_lr=0.1, noise_multiplier=1.0)
    fed = InProcessFederation(cfg)
    fed.run_round(1)
    assert all(set(state) == {"privacy-ledger"} for state in fed.states.values())  # no g_i


def test_calibrated_noise_and_sensitivities():
    cfg = RunConfig(strategy="alpha-normec", target_epsilon=3.0, num_server_rounds=50)
    assert resolve_noise_multiplier(cfg) == pytest.approx(calibrate_noise_multiplier(3.0, 1e-5, 1.0, 50))
    assert sensitivity(cfg) == 2.0
    assert sensitivity(cfg.replace(strategy="clip21", clip=0.3)) == pytest.approx(0.6)
    assert resolve_noise_multiplier(cfg.replace(target_epsilon=0.0, noise_multiplier=2.5)) == 2.5
    assert resolve_noise_multiplier(cfg.replace(target_epsilon=0.0)) == 0.0
    assert local_postprocessor(cfg, noise_multiplier=1.5).mechanism.std == pytest.approx(3.0)


def test_strategies_without_a_step_size_refuse_to_run():
    with pytest.raises(ConfigError, match="server-lr > 0"):
        build_algorithm(RunConfig(strategy="ef21", server_lr=0.0), 10)


def test_top_k_ef21_messages_are_sparse_after_the_first_round():
    algorithm = ef21(compressor=TopK(k=2), server_lr=0.1, num_clients=1, batch_size=0)
    first = algorithm.client_update(_task(torch.zeros(5), {}, Quadratic(torch.arange(5.0)), seed=0))
    assert isinstance(first.message, torch.Tensor)
    second = algorithm.client_update(_task(torch.ones(5), first.state, Quadratic(torch.arange(5.0)), seed=0))
    assert second.message.values.numel() == 2
