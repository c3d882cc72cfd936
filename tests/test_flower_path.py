"""The Flower strategy and ClientApp driven message by message in one process (no Ray, no SuperLink)."""

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.superlink.grid import InMemoryGrid

from clients.client_app import LEDGER_KEY, STATE_KEY
from clients.client_app import train as client_train
from fl_dp.config import ConfigError
from fl_dp.inprocess import InProcessFederation
from fl_dp.registry import REGISTRY
from fl_dp.server import ServerCore
from strategies.fl_dp_strategy import FlDpStrategy
from flower_fakes import FakeGrid, contexts_for


pytestmark = pytest.mark.usefixtures("flower_task")



def _run_flower(cfg, rounds, corrupt=None, node_ids=None):
    # default: sorted like the in-process client ids; node_ids[i] serves partition i
    node_ids = node_ids or [101 + i for i in range(cfg.num_clients)]
    strategy = FlDpStrategy(ServerCore(cfg))
    contexts = contexts_for(cfg, node_ids)
    grid = FakeGrid(node_ids)
    arrays = strategy.initial_arrays()
    trajectory = []
    for server_round in range(1, rounds + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = [client_train(m, contexts[m.metadata.dst_node_id]) for m in messages]
        if corrupt is not None:
            replies = corrupt(replies, messages)
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        strategy.evaluate(server_round, arrays)  # as Flower's loop does after each round
        trajectory.append(torch.from_numpy(arrays["x"].numpy().copy()))
    return trajectory, strategy, contexts, metrics


@pytest.mark.parametrize("strategy, extra", [
    ("alpha-normec", dict(server_lr=0.3, noise_multiplier=0.7)),
    ("ef21", dict(server_lr=0.3, compressor="top-k", compress_k=3)),
    ("dp-fedavg", dict(noise_multiplier=0.3, clients_per_round=2)),
])
def test_flower_path_and_in_process_loop_give_the_same_trajectory(tiny_cfg, strategy, extra):
    cfg = tiny_cfg.replace(strategy=strategy, num_server_rounds=4, **extra)
    trajectory, flower_strategy, contexts, metrics = _run_flower(cfg, 4)
    fed = InProcessFederation(cfg)
    for server_round, x in enumerate(trajectory, start=1):
        fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-6)
    assert metrics["bytes-up"] == fed.server.rows[-1]["bytes-up"]
    if strategy != "dp-fedavg":
        # client state persisted in the Flower context, equal to the in-process client's
        for i, context in enumerate(contexts.values()):
            assert np.allclose(context.state.array_records[STATE_KEY]["g"].numpy(), fed.states[f"client-{i}"]["g"].numpy())
    if strategy == "alpha-normec":
        # the client's own ledger survives the round trip through context.state exactly (float64)
        ledger = contexts[101].state.array_records[LEDGER_KEY]["rows"].numpy()
        assert ledger.dtype == np.float64 and ledger.tolist() == fed.states["client-0"]["privacy-ledger"].tolist()
        assert ledger.shape == (1, 3)  # four equal releases merged into one row


# every registry strategy, with a sampled cohort and the stochastic parts each one has (noise,
# minibatches, random compressors, stochastic signs, per-sample clipping, sparse messages)
EVERY_STRATEGY = {
    "alpha-normec": dict(server_lr=0.3, noise_multiplier=0.7, batch_size=8),
    "dp-normalized-sgd": dict(server_lr=0.3, noise_multiplier=0.7),
    "clip21": dict(server_lr=0.3, clip=0.1, noise_multiplier=0.7),
    "dp-fedavg": dict(noise_multiplier=0.3, batch_size=8),
    "fedavg": dict(batch_size=8, momentum=0.5),
    "ef21": dict(server_lr=0.3, compressor="top-k", compress_k=3),
    "ef21-norm": dict(server_lr=0.3, compressor="rand-k", compress_k=3),
    "ef21-sgdm-norm": dict(server_lr=0.3, compressor="top-k", compress_k=3, batch_size=8),
    "sign-vote": dict(server_lr=0.01, sign_compressor="dp-sign", noise_multiplier=1.0, clip=1.0),
    "ef-sign": dict(server_lr=0.1, batch_size=8),
    "mean-sgd": dict(server_lr=0.1, batch_size=8),
    "dp-sgd": dict(noise_multiplier=1.0, batch_size=8, clip=1.0),
    "dp-sgd-rs": dict(noise_multiplier=1.0, batch_size=8, clip=1.0, rs_final_rate=0.5),
}


# variants whose randomness or client work differs from their strategy's case above
VARIANTS = [
    ("sign-vote", dict(server_lr=0.01, sign_compressor="sto-sign", sto_sign_bound=5.0)),
    ("alpha-normec", dict(server_lr=0.3, noise_multiplier=0.7, local_steps=3, client_lr=0.1, batch_size=8)),
    ("sign-vote", dict(server_lr=0.01, grad_noise="student-t", grad_noise_kappa=1.5, grad_noise_scale=0.1)),
    ("mean-sgd", dict(server_lr=0.1, byzantine_fraction=0.25, aggregator="trimmed-mean", trim_fraction=0.25)),
]


@pytest.mark.parametrize(
    "strategy, extra", [(key, EVERY_STRATEGY[key]) for key in sorted(REGISTRY)] + VARIANTS
)
def test_every_strategy_has_one_trajectory_on_both_paths(tiny_cfg, strategy, extra):
    cfg = tiny_cfg.replace(strategy=strategy, num_server_rounds=4, clients_per_round=3, **extra)
    trajectory, flower_strategy, _, metrics = _run_flower(cfg, 4)
    fed = InProcessFederation(cfg)
    for server_round, x in enumerate(trajectory, start=1):
        row = fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-6), f"round {server_round}"
        assert flower_strategy.core.rows[server_round - 1]["sampled"] == row["sampled"]
    assert metrics["bytes-up"] == fed.server.rows[-1]["bytes-up"]
    assert sorted(flower_strategy.core.ledger.epsilons().values()) == pytest.approx(sorted(fed.server.ledger.epsilons().values()))


def test_error_replies_and_corrupted_payloads_are_rejected(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, num_server_rounds=2)

    def corrupt(replies, messages):
        replies[0] = Message(Error(code=0, reason="ClientApp crashed"), reply_to=messages[0])
        replies[1].content.array_records["arrays"]["dense"] = replies[1].content.array_records["arrays"]["dense"].__class__(
            np.full(replies[1].content.array_records["arrays"]["dense"].numpy().shape, np.nan, np.float32)
        )
        return replies

    trajectory, strategy, _, metrics = _run_flower(cfg, 2, corrupt)
    assert metrics["accepted"] == 2 and metrics["rejected"] == 2
    assert all(torch.isfinite(x).all() for x in trajectory)
    assert "ClientApp crashed" in strategy.core.rows[-1]["rejections"]
    assert "NaN" in strategy.core.rows[-1]["rejections"]


def _raising_in_round_2(monkeypatch, partition_id):
    """Client ``partition_id`` raises in round 2 (its training diverged, say)."""
    from fl_dp.client import ClientCore
    from fl_dp.wire import MalformedMessage

    honest_train = ClientCore.train

    def train(self, arrays, config, state):
        if self.partition_id == partition_id and int(config["server-round"]) == 2:
            raise MalformedMessage("training diverged")
        return honest_train(self, arrays, config, state)

    monkeypatch.setattr(ClientCore, "train", train)


@pytest.mark.parametrize("extra", [
    dict(noise_multiplier=0.7),
    dict(privacy_model="central", target_epsilon=4.0),
])
def test_a_client_that_raises_is_a_failure_in_both_paths_and_keeps_its_state(tiny_cfg, monkeypatch, extra):
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, num_server_rounds=3, **extra)
    _raising_in_round_2(monkeypatch, 1)
    node_ids = [101 + i for i in range(cfg.num_clients)]
    flower = FlDpStrategy(ServerCore(cfg))
    contexts = contexts_for(cfg, node_ids)
    arrays = flower.initial_arrays()
    trajectory = []
    for server_round in range(1, 4):
        replies = []
        for m in flower.configure_train(server_round, arrays, ConfigRecord(), FakeGrid(node_ids)):
            # as Flower's simulation worker does: an exception is an error reply, the Context is not updated
            try:
                replies.append(client_train(m, contexts[m.metadata.dst_node_id]))
            except Exception as ex:
                replies.append(Message(Error(code=0, reason=f"{type(ex)}:<'{ex}'>"), reply_to=m))
        arrays, _ = flower.aggregate_train(server_round, replies)
        trajectory.append(torch.from_numpy(arrays["x"].numpy().copy()))

    fed = InProcessFederation(cfg)
    for server_round, x in enumerate(trajectory, start=1):
        fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-6), server_round
    ours, theirs = fed.server.rows[1], flower.core.rows[1]
    assert "client-1: client error: MalformedMessage: training diverged" in ours["rejections"]
    assert "training diverged" in theirs["rejections"]
    assert ours["accepted"] == theirs["accepted"] == cfg.num_clients - 1
    for i in range(cfg.num_clients):
        assert np.allclose(contexts[101 + i].state.array_records[STATE_KEY]["g"].numpy(), fed.states[f"client-{i}"]["g"].numpy())


def test_a_client_that_raises_under_secure_aggregation_is_a_dropout_in_process(tiny_cfg, monkeypatch):
    cfg = tiny_cfg.replace(
        strategy="alpha-normec", server_lr=0.3, num_server_rounds=3, privacy_model="distributed", target_epsilon=4.0,
        secagg_survivors=0.5,
    )
    _raising_in_round_2(monkeypatch, 1)
    history = InProcessFederation(cfg).run()
    assert "client-1: client error: MalformedMessage: training diverged" in history["rejections"].iloc[1]
    assert history["accepted"].tolist() == [4, 3, 4]


def test_client_refuses_a_node_config_that_does_not_match_the_run(tiny_cfg):
    strategy = FlDpStrategy(ServerCore(tiny_cfg))
    message = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid([1, 2, 3, 4])))[0]
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 7}, state=RecordDict(), run_config=tiny_cfg.to_flwr())
    with pytest.raises(ConfigError, match="num-partitions=7"):
        client_train(message, context)


def _no_arrays(content):
    del content.array_records["arrays"]


def _no_config(content):
    del content.config_records["config"]


def _set(key, value):
    def change(content):
        content.config_records["config"][key] = value

    return change


@pytest.mark.parametrize("damage, message", [
    (_no_arrays, "a request holds an 'arrays' and a 'config' record"),
    (_no_config, "a request holds an 'arrays' and a 'config' record"),
    (_set("server-round", "1"), "server-round must be an integer, got '1'"),
    (_set("server-round", 1.5), "server-round must be an integer, got 1.5"),
    (_set("server-round", True), "server-round must be an integer, got True"),
    (_set("server-round", 0), "request round 0 .* is not a round of this run's 3"),
    (_set("server-round", 4), "request round 4 .* is not a round of this run's 3"),
    (_set("server-round", 2**62), "is not a round of this run's 3"),
    (_set("resumed-from", -1), "resumed from -1"),
    (_set("resumed-from", 1), "request round 1 \\(resumed from 1\\)"),
    (_set("resumed-from", [1]), "resumed-from must be an integer"),
    (_set("dp-noise-multiplier", "0.5"), "the server asks for noise multiplier '0.5'"),
    (_set("dp-noise-multiplier", float("nan")), "the server asks for noise multiplier nan"),
    (_set("dp-noise-multiplier", True), "the server asks for noise multiplier True"),
])
def test_a_malformed_request_is_refused_with_its_reason_and_the_state_kept(tiny_cfg, damage, message):
    from fl_dp.wire import MalformedMessage

    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, noise_multiplier=0.7)
    strategy = FlDpStrategy(ServerCore(cfg))
    request = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid([101, 102, 103, 104])))[0]
    damage(request.content)
    context = contexts_for(cfg, [101, 102, 103, 104])[101]
    with pytest.raises(MalformedMessage, match=message):
        client_train(request, context)
    assert not context.state.array_records  # nothing trained, nothing stored


@pytest.mark.parametrize("node_config, message", [
    ({"num-partitions": 4}, "lacks 'partition-id'"),
    ({"partition-id": 1}, "lacks 'num-partitions'"),
    ({"partition-id": 1.5, "num-partitions": 4}, "partition-id must be an integer, got 1.5"),
    ({"partition-id": True, "num-partitions": 4}, "partition-id must be an integer, got True"),
    ({"partition-id": "1", "num-partitions": 4}, "partition-id must be an integer, got '1'"),
    ({"partition-id": 0, "num-partitions": float("nan")}, "num-partitions must be an integer"),
    ({"partition-id": -1, "num-partitions": 4}, r"partition-id=-1 is outside \[0, num-partitions=4\)"),
    ({"partition-id": 4, "num-partitions": 4}, "partition-id=4 is outside"),
    ({"partition-id": 0, "num-partitions": 0}, "partition-id=0 is outside"),
    ({"partition-id": 0, "num-partitions": 4, "max_epsilon": 4.0}, "unknown node config keys: max_epsilon; a SuperNode's"),
    ({"partition-id": 0, "num-partitions": 4, "maxepsilon": 4.0, "zone": "eu"}, "unknown node config keys: maxepsilon, zone"),
    ({"partition-id": 0, "num-partitions": 4, "state-dir": 5}, "node config state-dir must be a path in quotes, got 5"),
    ({"partition-id": 0, "num-partitions": 4, "data-path": True}, "node config data-path must be a path in quotes"),
])
def test_a_bad_node_config_is_refused_naming_the_key(tiny_cfg, node_config, message):
    strategy = FlDpStrategy(ServerCore(tiny_cfg))
    request = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid([1, 2, 3, 4])))[0]
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=tiny_cfg.to_flwr())
    with pytest.raises(ConfigError, match=message):
        client_train(request, context)


def test_a_process_keeps_every_partition_of_a_run_and_shares_one_model(tiny_cfg):
    # a Ray actor serves all partitions in turn: none may be rebuilt on its next message
    from clients.client_app import _client

    cfg = tiny_cfg.replace(num_clients=100, clients_per_round=100)
    first = [_client(cfg, i) for i in range(cfg.num_clients)]
    again = [_client(cfg, i) for i in range(cfg.num_clients)]
    assert all(a is b for a, b in zip(first, again))
    assert len({id(c.objective.model) for c in first}) == 1
    assert len({id(c.objective.data) for c in first}) == cfg.num_clients


@pytest.mark.parametrize("strategy, extra", [
    ("alpha-normec", dict(server_lr=0.3, noise_multiplier=0.7)),
    ("dp-fedavg", dict(noise_multiplier=0.3)),
    ("alpha-normec", dict(server_lr=0.3, target_epsilon=4.0, local_steps=2, server_normalize=True)),
])
def test_flower_path_and_in_process_loop_agree_under_central_dp(tiny_cfg, strategy, extra):
    cfg = tiny_cfg.replace(strategy=strategy, privacy_model="central", num_clients=6, clients_per_round=3, num_server_rounds=4, **extra)
    trajectory, flower_strategy, _, metrics = _run_flower(cfg, 4)
    fed = InProcessFederation(cfg)
    for server_round, x in enumerate(trajectory, start=1):
        row = fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-6)
        assert flower_strategy.core.rows[server_round - 1]["sampled"] == row["sampled"]
    # both ledgers charge all six clients at q = 1/2 every round
    assert sorted(flower_strategy.core.ledger.epsilons().values()) == sorted(fed.server.ledger.epsilons().values())
    assert len(fed.server.ledger.epsilons()) == 6


@pytest.mark.parametrize("privacy_model", ["local", "central"])
def test_a_flower_run_with_unordered_node_ids_replays_in_process(tiny_cfg, privacy_model):
    # Flower's simulation gives SuperNodes random ids: sorted, they are not in partition order
    cfg = tiny_cfg.replace(strategy="alpha-normec", privacy_model=privacy_model, num_clients=6, clients_per_round=3,
                           server_lr=0.3, noise_multiplier=0.7, num_server_rounds=4)
    node_ids = [907, 13, 555, 42, 318, 76]
    trajectory, flower_strategy, _, _ = _run_flower(cfg, 4, node_ids=node_ids)
    partitions = flower_strategy.core.client_partitions()
    assert sorted(partitions) == sorted(node_ids) and sorted(partitions.values()) == list(range(6))
    fed = InProcessFederation(cfg, partitions=partitions)
    for server_round, x in enumerate(trajectory, start=1):
        fed.run_round(server_round)
        assert torch.allclose(fed.server.x, x, atol=1e-6)
    assert flower_strategy.core.ledger.epsilons() == pytest.approx(fed.server.ledger.epsilons())
    # without the mapping the in-process loop samples other partitions: another trajectory
    plain = InProcessFederation(cfg)
    for server_round in range(1, 5):
        plain.run_round(server_round)
    assert not torch.allclose(plain.server.x, trajectory[-1], atol=1e-6)


@pytest.mark.parametrize("partitions", [
    {"a": 0, "b": 0, "c": 1, "d": 2}, {"a": 0, "b": 1, "c": 2, "d": 4}, {"a": 0, "b": 1, "c": 2}, {},
    {"a": 0, "b": 1, "c": 2, "d": 3, "e": 0}, {"a": 0.0, "b": 1, "c": 2, "d": 3}, {"a": True, "b": 0, "c": 2, "d": 3},
    {1: 0, "1": 1, "c": 2, "d": 3},  # one client to the server, which knows a client by str(id)
])
def test_a_replay_refuses_partitions_that_are_not_a_one_to_one_map(tiny_cfg, partitions):
    with pytest.raises(ConfigError, match="client partitions must map 4 clients, distinct as text, one to one"):
        InProcessFederation(tiny_cfg, partitions=partitions)
    assert InProcessFederation(tiny_cfg, partitions={"a": 3, 7: np.int64(0), "c": 1, "d": 2}).run()["accepted"].tolist() == [4, 4, 4]


def test_client_partitions_ignore_what_is_not_a_partition(tiny_cfg):
    core = ServerCore(tiny_cfg.replace(num_clients=3, clients_per_round=3))
    core.sample([30, 10, 20])
    for node, claimed in ((10, 2.0), (20, 7.0), (30, 0.5)):  # 7: out of range, 0.5: not an index
        core._note_partition(str(node), {"partition-id": claimed})
    # 10's claim holds; 30 and 20 take the free partitions in the order the nodes were given
    assert core.client_partitions() == {30: 0, 10: 2, 20: 1}


class LoopbackGrid(FakeGrid):
    """A Grid whose send_and_receive hands every message to the ClientApp in this process."""

    def __init__(self, contexts):
        super().__init__(sorted(contexts))
        self.contexts = contexts

    def send_and_receive(self, messages, *, timeout=None):
        return [client_train(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def test_flowers_own_round_loop_runs_the_strategy_and_its_result_is_the_csv(tiny_cfg, tmp_path):
    from fl_dp.results import history_from_result

    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, noise_multiplier=0.5, num_server_rounds=3, eval_every=2,
                           eval_samples=50, results_dir=str(tmp_path))
    node_ids = [101 + i for i in range(cfg.num_clients)]
    strategy = FlDpStrategy(ServerCore(cfg))
    result = strategy.start(LoopbackGrid(contexts_for(cfg, node_ids)), strategy.initial_arrays(), num_rounds=3)
    fed = InProcessFederation(cfg)
    expected = fed.run()
    assert np.allclose(result.arrays["x"].numpy(), fed.server.x.numpy(), atol=1e-6)
    assert sorted(result.evaluate_metrics_serverapp) == [2, 3]  # eval-every 2, and the last round
    history = history_from_result(result, strategy.core.rows)
    assert list(history.columns) == list(expected.columns)
    volatile = ["round-seconds"]
    pd.testing.assert_frame_equal(history.drop(columns=volatile), expected.drop(columns=volatile), check_dtype=False, atol=1e-6)


def test_configure_train_broadcasts_the_arrays_flower_hands_it(tiny_cfg):
    from flwr.app import Array, ArrayRecord

    strategy = FlDpStrategy(ServerCore(tiny_cfg))
    elsewhere = np.full(strategy.core.dim, 0.25, np.float32)
    message = list(strategy.configure_train(1, ArrayRecord({"x": Array(elsewhere)}), ConfigRecord(), FakeGrid([1, 2, 3, 4])))[0]
    assert np.array_equal(message.content.array_records["arrays"]["x"].numpy(), elsewhere)
    with pytest.raises(ValueError, match="finite with"):
        strategy.configure_train(1, ArrayRecord({"x": Array(np.zeros(3, np.float32))}), ConfigRecord(), FakeGrid([1, 2, 3, 4]))


def _site_file(path, rows, label_of_row, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3))
    pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "label": [label_of_row(r) for r in x]}).to_csv(path, index=False)


def test_a_supernode_with_its_own_files_trains_on_them(tiny_cfg, tmp_path):
    _site_file(tmp_path / "server.csv", 60, lambda r: int(r[0] > 0), 0)
    _site_file(tmp_path / "site-0.csv", 30, lambda r: int(r[0] > 0), 1)
    _site_file(tmp_path / "site-1.csv", 12, lambda r: int(r[0] > 0), 2)
    cfg = tiny_cfg.replace(dataset=f"files:{tmp_path / 'server.csv'}", num_clients=2, clients_per_round=2, num_server_rounds=2)
    node_ids = [101, 102]
    contexts = contexts_for(cfg, node_ids)
    for i, node in enumerate(node_ids):
        contexts[node].node_config["data-path"] = str(tmp_path / f"site-{i}.csv")
    strategy = FlDpStrategy(ServerCore(cfg))
    messages = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid(node_ids)))
    replies = [client_train(m, contexts[m.metadata.dst_node_id]) for m in messages]
    counts = sorted(int(r.content.metric_records["metrics"]["num-examples"]) for r in replies)
    assert counts == [12, 30]  # every row of each site's own file, and only those
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["accepted"] == 2
    pd.DataFrame({"f1": [0.1], "label": [1]}).to_csv(tmp_path / "site-bad.csv", index=False)
    contexts[101].node_config["data-path"] = str(tmp_path / "site-bad.csv")
    bad = Context(run_id=2, node_id=101, node_config=contexts[101].node_config, state=RecordDict(), run_config=cfg.to_flwr())
    with pytest.raises(ConfigError, match="data-path: inputs of shape"):
        client_train(messages[0], bad)


class _SimulationGrid(InMemoryGrid):
    """The simulation's Grid type, its nodes registered after the ServerApp's first two looks (the
    engine registers them while the ServerApp starts)."""

    def __init__(self, registered):
        self.registered, self.looks = registered, 0

    def get_node_ids(self):
        self.looks += 1
        return list(range(1, self.registered + 1)) if self.looks > 2 else []


def test_a_simulation_waits_for_its_nodes_and_refuses_another_num_clients_naming_it():
    from strategies import flower_grid
    from strategies.fl_dp_strategy import wait_for_federation, wait_for_simulated_nodes

    assert flower_grid.is_simulation(_SimulationGrid(3)) and flower_grid.is_simulation(flower_grid.PromptGrid(_SimulationGrid(3)))
    assert not flower_grid.is_simulation(FakeGrid([1, 2]))
    assert wait_for_simulated_nodes(_SimulationGrid(3), 3, timeout=5, poll=0.001) == [1, 2, 3]
    for registered, asked in ((2, 5), (3, 1)):  # every ClientApp would refuse: num-partitions is 2 (3)
        with pytest.raises(ConfigError, match=rf"num-clients={asked}, but this simulation's federation has {registered} SuperNodes"):
            wait_for_simulated_nodes(_SimulationGrid(registered), asked, timeout=5, settle=0.05, poll=0.001)
    with pytest.raises(ConfigError, match="has 0 SuperNodes"):
        wait_for_simulated_nodes(_SimulationGrid(0), 2, timeout=0.05, poll=0.001)
    # num-clients = 0: every SuperNode, once their number stops changing
    assert wait_for_federation(_SimulationGrid(3), timeout=5, settle=0.05, poll=0.001) == [1, 2, 3]
    with pytest.raises(ConfigError, match="no SuperNode connected after 0 s"):
        wait_for_federation(_SimulationGrid(0), timeout=0.05, settle=0.01, poll=0.001)
