import numpy as np
import pytest
import torch

from fl_dp.compressors import TopK
from fl_dp.config import ConfigError
from fl_dp.inprocess import InProcessFederation, run_inprocess
from fl_dp.registry import REGISTRY, SAMPLE
from fl_dp.robustness import HeavyTailedNoise, flip, is_byzantine
from fl_dp.wire import SignVector


@pytest.mark.parametrize("kind", ["student-t", "pareto"])
def test_heavy_tailed_noise_is_centred_and_heavier_than_gaussian(kind):
    noise = HeavyTailedNoise(kind, kappa=1.5, scale=1.0)
    draws = noise.sample((200_000,), torch.Generator().manual_seed(0)).numpy()
    assert abs(np.median(draws)) < 0.05
    # a Gaussian of the same interquartile range almost never exceeds 20 IQRs; these often do
    iqr = np.subtract(*np.percentile(draws, [75, 25]))
    assert np.mean(np.abs(draws) > 20 * iqr) > 1e-3


def test_heavy_tailed_noise_validates_its_parameters():
    for kwargs in (dict(kind="cauchy", kappa=1.5, scale=1), dict(kind="student-t", kappa=1.0, scale=1), dict(kind="pareto", kappa=1.5, scale=0)):
        with pytest.raises(ValueError):
            HeavyTailedNoise(**kwargs)


def test_flip_negates_every_payload():
    v = torch.tensor([1.0, -2.0, 3.0])
    assert torch.equal(flip(v), -v)
    sparse = TopK(k=2)(v)
    assert torch.equal(flip(sparse).to_dense(), -sparse.to_dense())
    signs = SignVector(torch.tensor([1.0, -1.0]), 0.5)
    assert torch.equal(flip(signs).to_dense(), -signs.to_dense())
    # the large-value attack: an EF-sign client's scale 1000 times larger, its bits flipped
    assert torch.equal(flip(signs, -1000.0).to_dense(), -1000 * signs.to_dense())


def test_the_large_value_attack_moves_ef_sign_and_is_refused_by_the_majority_vote(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="ef-sign", server_lr=0.01, batch_size=8, byzantine_fraction=0.25)
    attacked = [run_inprocess(cfg.replace(byzantine_attack=attack))["test-loss"].iloc[-1] for attack in ("sign-flip", "large")]
    assert attacked[0] != attacked[1]
    with pytest.raises(ConfigError, match="^byzantine-attack = 'large' would have no effect: sign-vote does not read it here: a majority vote reads only the bits"):
        cfg.replace(strategy="sign-vote", byzantine_attack="large")


def test_byzantine_clients_are_the_first_fraction():
    assert [is_byzantine(i, 10, 0.3) for i in range(10)] == [True] * 3 + [False] * 7
    assert not any(is_byzantine(i, 10, 0.0) for i in range(10))


def test_flipping_clients_send_the_opposite_message(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="mean-sgd", server_lr=0.1, byzantine_fraction=0.25)
    honest = InProcessFederation(tiny_cfg.replace(strategy="mean-sgd", server_lr=0.1))
    faulty = InProcessFederation(cfg)
    arrays, config = honest.server.broadcast(1)
    for cid in ("client-0", "client-1"):
        good = honest.clients[cid].train(arrays, config, {})[0]["dense"]
        sent = faulty.clients[cid].train(arrays, config, {})[0]["dense"]
        assert np.allclose(sent, -good if cid == "client-0" else good)


def test_gradient_noise_reaches_the_oracle_but_not_the_clean_objective(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="mean-sgd", server_lr=0.1, grad_noise="student-t", grad_noise_kappa=1.5, grad_noise_scale=10.0)
    client = InProcessFederation(cfg).clients["client-0"]
    x = torch.zeros(client.objective.dim)
    _, clean = client.objective.stochastic_gradient(x, 0, None)
    _, noisy = client.oracle.stochastic_gradient(x, 0, torch.Generator().manual_seed(0))
    assert not torch.allclose(clean, noisy)


def test_trimmed_mean_and_median_per_coordinate():
    from fl_dp.robustness import coordinate_median, robust_mean, trimmed_mean

    messages = [torch.tensor([1.0, -5.0]), torch.tensor([2.0, 0.0]), torch.tensor([3.0, 1.0]), torch.tensor([1e6, 2.0]), torch.tensor([4.0, 3.0])]
    assert torch.equal(trimmed_mean(messages, 0.2), torch.tensor([3.0, 1.0]))  # drops 1 high and 1 low per coordinate
    assert torch.equal(trimmed_mean(messages, 0.0), torch.stack(messages).mean(0))
    assert torch.equal(coordinate_median(messages), torch.tensor([3.0, 1.0]))
    assert torch.equal(robust_mean(messages[:4], "median", 0.1), torch.tensor([2.5, 0.5]))


@pytest.mark.parametrize("aggregator", ["trimmed-mean", "median"])
@pytest.mark.parametrize("attack", ["sign-flip", "large"])
def test_a_robust_aggregator_bounds_the_pull_of_a_byzantine_minority(tiny_cfg, aggregator, attack):
    cfg = tiny_cfg.replace(strategy="mean-sgd", server_lr=0.5, num_clients=10, clients_per_round=10)
    honest = InProcessFederation(cfg)
    x0 = honest.server.x.clone()
    honest.run_round(1)
    honest_step = float(torch.linalg.vector_norm(honest.server.x - x0))
    pulls = {}
    for name in ("mean", aggregator):
        trim = dict(trim_fraction=0.2) if name == "trimmed-mean" else {}
        attacked = InProcessFederation(cfg.replace(byzantine_fraction=0.2, byzantine_attack=attack, aggregator=name, **trim))
        attacked.run_round(1)
        pulls[name] = float(torch.linalg.vector_norm(attacked.server.x - honest.server.x))
    assert pulls[aggregator] < honest_step  # the robust step stays near the honest one
    if attack == "large":
        assert pulls["mean"] > 100 * honest_step  # the plain mean is dragged 1000x the attacker's message


def test_robust_aggregators_are_refused_where_they_do_not_apply(tiny_cfg):
    with pytest.raises(ConfigError, match="aggregator"):
        tiny_cfg.replace(strategy="sign-vote", server_lr=0.1, aggregator="median")
    with pytest.raises(ConfigError, match="aggregator"):
        tiny_cfg.replace(strategy="alpha-normec", server_lr=0.1, privacy_model="central", aggregator="median")
    with pytest.raises(ConfigError, match="unknown aggregator"):
        tiny_cfg.replace(aggregator="krum")
    with pytest.raises(ConfigError, match="trim-fraction"):
        tiny_cfg.replace(aggregator="trimmed-mean", trim_fraction=0.5)


def test_ef_sign_with_a_median_ignores_one_huge_scale(tiny_cfg):
    from fl_dp.wire import Reply

    cfg = tiny_cfg.replace(strategy="ef-sign", server_lr=0.01, num_clients=5, clients_per_round=5, aggregator="median")
    fed = InProcessFederation(cfg)
    cohort = fed.server.sample(list(fed.clients))
    arrays, config = fed.server.broadcast(1)
    replies = [Reply(c, *fed.clients[c].train(arrays, config, {})[:2]) for c in cohort]
    honest_scales = [float(r.arrays["scale"][0]) for r in replies]
    replies[0] = Reply(replies[0].client_id, {**replies[0].arrays, "scale": np.array([1e6], np.float32)}, replies[0].metrics)
    x0 = fed.server.x.clone()
    fed.server.aggregate(1, replies)
    assert float((fed.server.x - x0).abs().max()) <= max(honest_scales)


@pytest.mark.parametrize("strategy", sorted(REGISTRY))
def test_heavy_tailed_gradient_noise_reaches_every_strategy_that_takes_minibatch_gradients(short_run, strategy):
    """Local SGD (FedAvg, DP-FedAvg) included: its steps read the noisy gradients too. DP-SGD clips
    each sample's gradient and refuses the key."""
    cfg = short_run(strategy)
    noisy = dict(grad_noise="student-t", grad_noise_scale=5.0)
    if REGISTRY[strategy].privacy == SAMPLE:
        with pytest.raises(ConfigError, match=f"^grad-noise = 'student-t' would have no effect: {strategy} does not read it here: it clips each sample's gradient"):
            cfg.replace(**noisy)
        return
    final = [run_inprocess(run)["test-loss"].iloc[-1] for run in (cfg, cfg.replace(**noisy))]
    assert final[0] != final[1]


def test_local_sgd_with_gradient_noise_adds_it_to_every_step(tiny_cfg):
    fed = InProcessFederation(tiny_cfg.replace(grad_noise="student-t", grad_noise_kappa=2.0, grad_noise_scale=1.0))
    client = fed.clients["client-0"]
    x = fed.server.x
    plain, _, steps = client.objective.sgd(x, 1, 0.1, 8, torch.Generator().manual_seed(0))
    noisy, _, noisy_steps = client.oracle.sgd(x, 1, 0.1, 8, torch.Generator().manual_seed(0))
    assert steps == noisy_steps > 1
    # t(2) noise of scale 1 on each of the steps' d coordinates: far from the noiseless path
    assert float(torch.linalg.vector_norm(noisy - plain)) > 0.1 * steps**0.5
    with pytest.raises(ValueError, match="seeded generator"):
        client.oracle.sgd(x, 1, 0.1, 8, None)
