import math

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fl_dp import training
from fl_dp.dpsgd import cooling_rate, epoch_mask, masked_noisy_sum, poisson_batch
from fl_dp.inprocess import InProcessFederation
from fl_dp.operators import clip_rows
from fl_dp.config import ConfigError
from fl_dp.privacy import Release, epsilon_of
from fl_dp.server import check_sample_level_target


def test_mask_is_applied_before_clipping():
    # the sample's gradient is huge on the dropped coordinate and small on the kept one:
    # masking first leaves the kept part alone; clipping first would have shrunk it 1000-fold
    per_sample = torch.tensor([[100.0, 0.1], [0.0, 3.0]])
    out = masked_noisy_sum(per_sample, torch.tensor([0.0, 1.0]), clip=1.0, noise_std=0.0, generator=None)
    assert torch.allclose(out, torch.tensor([0.0, 0.1 + 1.0]))


def test_every_kept_part_has_norm_at_most_c_and_noise_is_zero_on_masked_coordinates():
    generator = torch.Generator().manual_seed(0)
    mask = epoch_mask(50, 0.6, seed=3)
    for _ in range(50):
        per_sample = torch.randn(1, 50) * 10 ** torch.randint(-2, 3, ()).item()
        clean = masked_noisy_sum(per_sample, mask, clip=0.5, noise_std=0.0, generator=generator)
        assert torch.linalg.vector_norm(clean) <= 0.5 + 1e-6
    noisy = masked_noisy_sum(torch.randn(8, 50), mask, clip=0.5, noise_std=5.0, generator=generator)
    assert torch.all(noisy[mask == 0] == 0) and torch.all(noisy[mask == 1] != 0)


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_masked_noisy_sum_is_the_sum_of_the_clipped_masked_rows(rate):
    per_sample = torch.randn(300, 40) * torch.logspace(-2, 2, 300).unsqueeze(1)  # some rows clipped, some not
    mask = epoch_mask(40, rate, seed=1)
    reference = clip_rows(per_sample * mask, 0.7).sum(0)
    assert torch.allclose(masked_noisy_sum(per_sample, mask, clip=0.7, noise_std=0.0, generator=None), reference, atol=1e-5)
    assert torch.equal(masked_noisy_sum(torch.zeros(0, 40), mask, clip=0.7, noise_std=0.0, generator=None), torch.zeros(40))
    with pytest.raises(ValueError, match="clipping threshold"):
        masked_noisy_sum(per_sample, mask, clip=0.0, noise_std=0.0, generator=None)


def test_gradual_cooling_and_epoch_masks():
    assert [cooling_rate(0.9, e, 4) for e in range(4)] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert cooling_rate(0.9, 0, 1) == 0.0
    mask = epoch_mask(1000, 0.3, seed=7)
    assert int((mask == 0).sum()) == 300
    assert torch.equal(mask, epoch_mask(1000, 0.3, seed=7))  # every client of the epoch draws the same mask
    assert not torch.equal(mask, epoch_mask(1000, 0.3, seed=8))
    with pytest.raises(ValueError):
        cooling_rate(1.0, 0, 2)


def test_poisson_batches_have_the_expected_size():
    generator = torch.Generator().manual_seed(0)
    sizes = [len(poisson_batch(1000, 0.05, generator)) for _ in range(400)]
    assert sum(sizes) / len(sizes) == pytest.approx(50, rel=0.05)


def test_ledger_matches_opacus_privacy_engine_on_the_same_schedule():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(200, 5), torch.randint(0, 2, (200,)))
    model = torch.nn.Linear(5, 2)
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=20),
        noise_multiplier=1.3,
        max_grad_norm=1.0,
    )
    steps = 0
    for _ in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            steps += 1
    ours = epsilon_of([Release(1.3, 20 / 200, steps)], 1e-5)
    assert ours == pytest.approx(engine.get_epsilon(1e-5), rel=1e-9)


def test_per_sample_gradients_match_single_sample_gradients(tiny_cfg):
    # two clients of one process share the model (and its per-sample copy) but not their data
    clients = InProcessFederation(tiny_cfg).clients
    for objective in (clients["client-0"].objective, clients["client-1"].objective, clients["client-0"].objective):
        x = torch.randn(objective.dim)
        indices = torch.tensor([0, 3, 5])
        per_sample = objective.per_sample_gradients(x, indices)
        for row, index in zip(per_sample, indices):
            _, reference = objective.loss_and_grad(x, index.view(1))
            assert torch.allclose(row, reference, atol=1e-6)


def test_per_sample_gradients_in_chunks_are_the_whole_batchs(tiny_cfg, monkeypatch):
    objective = InProcessFederation(tiny_cfg).clients["client-0"].objective
    x, indices = torch.randn(objective.dim), torch.tensor([4, 0, 7, 2, 9])
    whole = objective.per_sample_gradients(x, indices)
    monkeypatch.setattr(training, "PER_SAMPLE_CHUNK", 2)
    assert torch.allclose(objective.per_sample_gradients(x, indices), whole, atol=1e-6)


def test_dp_sgd_rs_round_sends_sparse_updates_and_accounts_each_clients_steps(tiny_cfg):
    cfg = tiny_cfg.replace(
        strategy="dp-sgd-rs", rs_final_rate=0.9, target_epsilon=3.0, batch_size=20, num_server_rounds=3, client_lr=0.1
    )
    fed = InProcessFederation(cfg)
    history = fed.run()
    # round 1 is epoch 0 of 3 (rate 0): dense; the last round drops 90% of the coordinates
    assert history["bytes-up"].iloc[0] == history["bytes-up-dense"].iloc[0]
    assert history["bytes-up"].iloc[-1] < 0.3 * history["bytes-up-dense"].iloc[-1]
    assert history["epsilon-max"].iloc[-1] <= 3.0 + 1e-6
    for cid, client in fed.clients.items():
        n = len(client.objective.data)
        steps = round(n / 20)
        sigma = fed.server.ledger.releases(cid)[0].noise_multiplier
        assert fed.server.ledger.releases(cid) == [Release(sigma, 20 / n, 3 * steps)]
        # the client's own ledger, kept in its state, holds the same composition
        assert fed.states[cid]["privacy-ledger"].tolist() == [[sigma, 20 / n, 3 * steps]]
    assert (history["client-epsilon-max"] == history["epsilon-max"]).all()


def test_one_client_with_all_data_is_centralised_dp_sgd(tiny_cfg):
    """The federated path with one client and server-lr 1 is DP-SGD on the whole training set."""
    cfg = tiny_cfg.replace(strategy="dp-sgd", num_clients=1, clients_per_round=1, noise_multiplier=1.0, batch_size=40, num_server_rounds=2)
    fed = InProcessFederation(cfg)
    assert len(fed.clients["client-0"].objective.data) == 1600
    history = fed.run()
    assert history["epsilon-max"].iloc[-1] == pytest.approx(epsilon_of([Release(1.0, 40 / 1600, 80)], cfg.delta))
    assert math.isnan(history["train-loss"].iloc[-1])  # a private client sends no loss


@pytest.mark.parametrize("strategy", ["dp-sgd", "dp-sgd-rs"])
def test_a_target_no_client_can_reach_is_refused_before_round_one_naming_the_key(tiny_cfg, strategy):
    # every client calibrates its own sigma from its size; none could reach 0.001 with useful noise
    cfg = tiny_cfg.replace(strategy=strategy, target_epsilon=0.001, batch_size=1)
    with pytest.raises(ConfigError, match=f"target-epsilon 0.001 cannot be reached with useful noise by a {strategy} client of"):
        InProcessFederation(cfg)
    InProcessFederation(cfg.replace(target_epsilon=1.0))


def test_the_target_is_checked_for_the_smallest_and_the_largest_client(tiny_cfg):
    # at eps 0.01 a client of 400 examples needs sigma 279 (rate 0.02), one of 9 more than 1000 (rate 0.89)
    cfg = tiny_cfg.replace(strategy="dp-sgd", target_epsilon=0.01, batch_size=8, num_server_rounds=50)
    check_sample_level_target(cfg, [400, 400])
    with pytest.raises(ConfigError, match="by a dp-sgd client of 9 examples"):
        check_sample_level_target(cfg, [400, 9, 400])


@pytest.mark.parametrize("strategy", ["dp-sgd", "dp-sgd-rs"])
def test_the_keys_per_sample_gradients_leave_out_are_refused_naming_them(tiny_cfg, strategy):
    cfg = tiny_cfg.replace(strategy=strategy, target_epsilon=1.0, batch_size=8)
    with pytest.raises(ConfigError, match=f"^regularizer-lambda = 0.1 would have no effect: {strategy} does not read it here: its per-sample"):
        cfg.replace(regularizer_lambda=0.1)
