"""The server side: bad replies are rejected, the global model stays finite, metrics and CSV are written."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from fl_dp.config import ConfigError
from fl_dp.inprocess import InProcessFederation, run_inprocess
from fl_dp.wire import Reply
from fl_dp.server import ServerCore
from fl_dp.wire import MalformedMessage


def _good_reply(fed, cid="client-0"):
    fed.server.sample(list(fed.clients))  # tiny_cfg: every client is addressed
    arrays, config = fed.server.broadcast(1)
    out, metrics, _ = fed.clients[cid].train(arrays, config, {})
    return Reply(cid, out, metrics)


@pytest.mark.parametrize(
    "bad",
    [
        lambda dim: ({"dense": np.full(dim, np.nan, np.float32)}, {}),
        lambda dim: ({"dense": np.zeros(dim + 1, np.float32)}, {}),
        lambda dim: ({"dense": np.zeros((dim, 1), np.float32)}, {}),
        lambda dim: ({"values": np.ones(1, np.float32), "indices": np.array([dim], np.int32)}, {}),
        lambda dim: ({"dense": np.zeros(dim, np.float32)}, {"train-loss": math.inf}),
        lambda dim: ({"dense": np.zeros(dim, np.float32)}, {"num-examples": 0}),
        lambda dim: ({"dense": np.zeros(dim, np.float32)}, {"num-examples": math.nan}),
        lambda dim: ({"dense": np.zeros(dim, np.float32)}, {"dp-noise-multiplier": -1.0, "dp-sample-rate": 1.0, "dp-steps": 1}),
    ],
)
def test_bad_replies_are_rejected_and_the_model_stays_finite(tiny_cfg, bad):
    fed = InProcessFederation(tiny_cfg)
    good = _good_reply(fed)
    arrays, metric_changes = bad(fed.server.dim)
    bad_reply = Reply("client-1", arrays, {**good.metrics, **metric_changes})
    row = fed.server.aggregate(1, [good, bad_reply])
    assert row["accepted"] == 1 and row["rejected"] == 1 and "client-1" in row["rejections"]
    assert torch.isfinite(fed.server.x).all()
    # the accepted reply alone moved the model, as if the bad one had not been sent
    alone = InProcessFederation(tiny_cfg)
    alone.server.sample(list(alone.clients))
    alone.server.aggregate(1, [good])
    assert torch.allclose(fed.server.x, alone.server.x)


def test_a_round_with_only_failures_keeps_the_model(tiny_cfg):
    fed = InProcessFederation(tiny_cfg)
    x = fed.server.x.clone()
    row = fed.server.aggregate(1, [], failures=[("node-7", "client error: out of memory")])
    assert torch.equal(fed.server.x, x)
    assert row["accepted"] == 0 and row["sampled"] == 1 and "out of memory" in row["rejections"]
    assert math.isnan(row["train-loss"])


def test_non_finite_aggregate_is_not_applied(tiny_cfg):
    """Each reply is finite, but their sum overflows float32: the round is refused as a whole."""
    # mean-sgd's message has no norm bound (a bounded strategy rejects each of these replies)
    fed = InProcessFederation(tiny_cfg.replace(strategy="mean-sgd", server_lr=0.1))
    good = _good_reply(fed)
    huge = {"dense": np.full(fed.server.dim, 3e38, np.float32)}
    x, G = fed.server.x.clone(), fed.server.state["G"].clone()
    row = fed.server.aggregate(1, [Reply(f"client-{i}", huge, good.metrics) for i in range(4)])
    assert torch.equal(fed.server.x, x) and torch.equal(fed.server.state["G"], G)
    assert "not finite" in row["rejections"]


def test_metrics_per_round_and_csv(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(strategy="alpha-normec", target_epsilon=4.0, server_lr=0.2, results_dir=str(tmp_path), run_name="demo")
    fed = InProcessFederation(cfg)
    history = fed.run()
    assert list(history["round"]) == [1, 2, 3]
    for column in ("test-loss", "test-accuracy", "epsilon-max", "epsilon-mean", "bytes-up", "bytes-down"):
        assert history[column].notna().all(), column
    # private clients send no training loss: it would be an unaccounted release
    assert history["train-loss"].isna().all()
    assert history["epsilon-max"].is_monotonic_increasing
    # each client composes its own ledger (in its state) to the same epsilon as the server's
    assert np.allclose(history["client-epsilon-max"], history["epsilon-max"])
    assert history["epsilon-max"].iloc[-1] <= 4.0  # calibrated over the 3 planned rounds
    path = fed.server.save()
    assert path == tmp_path / "demo.csv"
    assert pd.read_csv(path).shape == history.shape


def test_same_seed_same_run(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="dp-fedavg", noise_multiplier=0.5, batch_size=8)
    a, b = run_inprocess(cfg), run_inprocess(cfg)
    pd.testing.assert_frame_equal(a.drop(columns="round-seconds"), b.drop(columns="round-seconds"))
    c = run_inprocess(cfg.replace(seed=1))
    assert not np.allclose(a["test-loss"], c["test-loss"])


def test_fedavg_learns_the_synthetic_task(tiny_cfg):
    history = run_inprocess(tiny_cfg.replace(num_server_rounds=5, client_lr=0.5, local_epochs=2))
    assert history["test-accuracy"].iloc[-1] > 0.85


def test_private_clients_send_only_accounted_metrics(tiny_cfg):
    """Nothing computed from the data leaves a private client: its (public) size and partition id,
    and the record of its release."""
    private = InProcessFederation(tiny_cfg.replace(strategy="alpha-normec", server_lr=0.1, noise_multiplier=1.0))
    arrays, config = private.server.broadcast(1)
    _, metrics, state = private.clients["client-0"].train(arrays, config, {})
    accounted = {"num-examples", "partition-id", "dp-noise-multiplier", "dp-sample-rate", "dp-steps", "client-epsilon"}
    assert set(metrics) == accounted | {"state-fresh"}  # its first round: it started empty
    _, metrics, _ = private.clients["client-0"].train(arrays, config, state)
    assert set(metrics) == accounted
    public = InProcessFederation(tiny_cfg.replace(strategy="alpha-normec", server_lr=0.1))
    _, metrics, _ = public.clients["client-0"].train(*public.server.broadcast(1), {})
    assert {"train-loss", "grad-norm"} <= set(metrics)


def test_a_client_refuses_a_server_asking_for_less_noise_than_its_config(tiny_cfg):
    fed = InProcessFederation(tiny_cfg.replace(strategy="alpha-normec", server_lr=0.1, target_epsilon=2.0))
    arrays, config = fed.server.broadcast(1)
    with pytest.raises(MalformedMessage, match="refusing to train"):
        fed.clients["client-0"].train(arrays, {**config, "dp-noise-multiplier": 0.0}, {})
    fed.clients["client-0"].train(arrays, config, {})  # the honest request is answered


@pytest.mark.parametrize("dtype", [np.float64, np.complex64, np.float16, np.int32])
def test_a_client_refuses_a_global_vector_that_is_not_the_float32_the_server_sends(tiny_cfg, dtype):
    """It was cast: a complex vector lost its imaginary part, a float64 one above 3.4e38 became inf."""
    fed = InProcessFederation(tiny_cfg)
    arrays, config = fed.server.broadcast(1)
    with pytest.raises(MalformedMessage, match="global vector must be float32"):
        fed.clients["client-0"].train({"x": arrays["x"].astype(dtype)}, config, {})
    with pytest.raises(MalformedMessage, match="global vector must be float32"):
        fed.clients["client-0"].train({"x": arrays["x"].reshape(1, -1)}, config, {})
    fed.clients["client-0"].train(arrays, config, {})  # the honest request is answered


def test_clients_sharing_a_model_compute_what_separate_models_compute(tiny_cfg):
    import threading

    from fl_dp.client import ClientCore
    from fl_dp.task import model_for, shared_client_model

    fed = InProcessFederation(tiny_cfg)
    arrays, config = fed.server.broadcast(1)
    shared = [ClientCore(tiny_cfg, i) for i in range(tiny_cfg.num_clients)]
    assert len({id(c.objective.model) for c in shared}) == 1
    for i, client in enumerate(shared):
        separate = ClientCore(tiny_cfg, i)
        separate.objective.model = model_for(tiny_cfg)
        out_shared, _, _ = client.train(arrays, config, {})
        out_separate, _, _ = separate.train(arrays, config, {})
        np.testing.assert_array_equal(out_shared["dense"], out_separate["dense"])
    other_thread = []
    thread = threading.Thread(target=lambda: other_thread.append(shared_client_model(tiny_cfg)))
    thread.start()
    thread.join()
    assert other_thread[0] is not shared_client_model(tiny_cfg)


def test_a_model_with_buffers_is_not_shared(tiny_cfg, monkeypatch):
    from fl_dp import task

    def with_buffer(cfg):
        model = torch.nn.Linear(2, 1)
        model.register_buffer("running_mean", torch.zeros(1))
        return model

    monkeypatch.setattr(task, "model_for", with_buffer)
    monkeypatch.setattr(task, "_client_models", task.threading.local())
    assert task.shared_client_model(tiny_cfg) is not task.shared_client_model(tiny_cfg)


@pytest.mark.parametrize("rounds", [[0], [2], [1, 1], [1, 3], [True], [1.0], ["1"]])
def test_rounds_run_once_each_in_order(tiny_cfg, rounds):
    """A repeated round would draw its seeded noise again on other messages; a skipped one would be
    missing from the table: both are refused, naming the next round."""
    fed = InProcessFederation(tiny_cfg.replace(strategy="alpha-normec", noise_multiplier=1.0))
    *earlier, last = rounds
    for server_round in earlier:
        fed.run_round(server_round)
    with pytest.raises(ValueError, match=f"the next round is {len(earlier) + 1}"):
        fed.run_round(last)
    assert len(fed.server.rows) == len(earlier)
