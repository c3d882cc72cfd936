"""Clients that trust no server: the node operator's privacy floor, from the SuperNode's node config."""

import threading

import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import evaluate as client_evaluate
from clients.client_app import train as client_train
from fl_dp.config import ConfigError
from fl_dp.client import ClientCore
from fl_dp.server import ServerCore
from fl_dp.privacy import Release, epsilon_of
from fl_dp.privacy_floor import NodeSpending, PrivacyFloor, PrivacyRefusal
from flower_fakes import FakeGrid
from strategies.fl_dp_strategy import FlDpStrategy


def test_the_floor_is_read_from_node_config_only_when_set():
    assert PrivacyFloor.from_node_config({"partition-id": 0, "num-partitions": 4}) is None
    floor = PrivacyFloor.from_node_config({"max-epsilon": 3, "min-noise-multiplier": 0.5, "state-dir": "/var/lib/n"})
    assert floor == PrivacyFloor(max_epsilon=3.0, delta=1e-5, min_noise_multiplier=0.5)
    assert PrivacyFloor.from_node_config({"privacy-delta": 1e-6}).delta == 1e-6
    assert PrivacyFloor.from_node_config({"min-noise-multiplier": 0.5}).min_noise_multiplier == 0.5  # no budget to keep
    for bad in ({"max-epsilon": "8"}, {"max-epsilon": -1.0}, {"min-noise-multiplier": True}, {"privacy-delta": 2.0}):
        with pytest.raises(ValueError):
            PrivacyFloor.from_node_config({**bad, "state-dir": "/var/lib/n"})
    # a budget kept in memory would be forgotten by a restart or a new run
    for no_dir in ({"max-epsilon": 3.0}, {"max-epsilon": 3.0, "state-dir": ""}):
        with pytest.raises(ValueError, match="max-epsilon needs the node's own state-dir"):
            PrivacyFloor.from_node_config(no_dir)


def _train(cfg, floor, rounds):
    client = ClientCore(cfg, 0, floor)
    server = ServerCore(cfg)
    state, trained = {}, 0
    for server_round in range(1, rounds + 1):
        arrays, config = server.broadcast(server_round)
        try:
            _, metrics, state = client.train(arrays, config, state)
        except PrivacyRefusal:
            break
        trained += 1
    return trained, state, metrics if trained else None


@pytest.mark.parametrize("changes, reason", [
    (dict(noise_multiplier=0.3), "below this node's min-noise-multiplier"),
    (dict(privacy_model="central", noise_multiplier=2.0), "central"),
    (dict(noise_multiplier=0.0), "without noise"),
])
def test_a_run_with_less_protection_than_the_floor_is_refused(tiny_cfg, changes, reason):
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, **changes)
    client = ClientCore(cfg, 0, PrivacyFloor(min_noise_multiplier=0.5))
    arrays, config = ServerCore(cfg).broadcast(1)
    with pytest.raises(PrivacyRefusal, match=reason):
        client.train(arrays, config, {})


@pytest.mark.parametrize("strategy, extra", [
    ("alpha-normec", dict(server_lr=0.3, noise_multiplier=1.5)),
    ("dp-fedavg", dict(noise_multiplier=1.5)),
    ("dp-sgd", dict(noise_multiplier=1.2, batch_size=40)),
])
def test_a_client_stops_training_before_its_ledger_passes_max_epsilon(tiny_cfg, strategy, extra):
    cfg = tiny_cfg.replace(strategy=strategy, num_server_rounds=30, **extra)
    floor = PrivacyFloor(max_epsilon=6.0, delta=1e-6)
    trained, state, _ = _train(cfg, floor, 30)
    assert 0 < trained < 30
    history = [Release(n, r, int(k)) for n, r, k in state["privacy-ledger"].tolist()]
    spent = epsilon_of(history, floor.delta)
    assert spent <= 6.0
    (merged,) = history  # every round released the same: one merged row
    one_round = Release(merged.noise_multiplier, merged.sample_rate, merged.steps // trained)
    assert epsilon_of([*history, one_round], floor.delta) > 6.0  # it stopped at the last round that fit


def test_a_supernode_with_a_floor_refuses_through_the_clientapp(tiny_cfg):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, noise_multiplier=0.3)
    strategy = FlDpStrategy(ServerCore(cfg))

    message = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid([7, 8, 9, 10])))[0]

    def context(node_config):
        return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=cfg.to_flwr())

    base = {"partition-id": 0, "num-partitions": 4}
    with pytest.raises(PrivacyRefusal, match="min-noise-multiplier 0.5"):
        client_train(message, context({**base, "min-noise-multiplier": 0.5}))
    with pytest.raises(ConfigError, match="max-epsilon must be a number"):
        client_train(message, context({**base, "max-epsilon": "lots"}))
    with pytest.raises(ConfigError, match="max-epsilon needs the node's own state-dir"):
        client_train(message, context({**base, "max-epsilon": 8.0}))
    reply = client_train(message, context({**base, "min-noise-multiplier": 0.2}))
    assert "metrics" in reply.content.metric_records


def _node(cfg, tmp_path, run_id, node_config=None):
    """A SuperNode's view of run ``run_id``: its context (fresh, as after a start) and the train message of
    each round addressed to it."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, 1, 0
    strategy = FlDpStrategy(ServerCore(cfg))

    def message(server_round):
        sent = strategy.configure_train(server_round, strategy.initial_arrays(), ConfigRecord(), FakeGrid([7, 8, 9, 10]))
        return next(m for m in sent if m.metadata.dst_node_id == 7)

    config = {"partition-id": 0, "num-partitions": 4, "state-dir": str(tmp_path / "node"), "max-epsilon": 6.0,
              "privacy-delta": 1e-6, **(node_config or {})}
    config = {key: value for key, value in config.items() if value is not None}  # None: a key the node does not set
    context = Context(run_id=run_id, node_id=7, node_config=config, state=RecordDict(), run_config=cfg.to_flwr())
    return context, message


def _rounds_trained(cfg, tmp_path, run_id, rounds, node_config=None):
    context, message = _node(cfg, tmp_path, run_id, node_config)
    for server_round in range(1, rounds + 1):
        try:
            client_train(message(server_round), context)
        except PrivacyRefusal:
            return server_round - 1
    return rounds


def test_the_budget_holds_over_runs_and_restarts_not_per_run(tiny_cfg, tmp_path):
    """A server cannot renew a node's max-epsilon by submitting another run, or by a run config that moves
    the clients' state elsewhere: what the node spent is counted in its own state-dir, over every run."""
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, noise_multiplier=1.5, num_server_rounds=30)
    first = _rounds_trained(cfg, tmp_path, run_id=1, rounds=30)
    assert 0 < first < 30
    assert _rounds_trained(cfg, tmp_path, run_id=2, rounds=30) == 0  # a new run: nothing left to spend
    # (a run-name cannot be the folder of the count: the state files would overwrite it)
    elsewhere = cfg.replace(client_state_dir=str(tmp_path / "fresh"), run_name="privacy-spent")
    assert _rounds_trained(elsewhere, tmp_path, run_id=3, rounds=30) == 0
    # half the budget in one run, then a new run gets only what is left (the same total as one long run)
    half = tmp_path / "half"
    a = _rounds_trained(cfg.replace(num_server_rounds=first // 2), half, run_id=4, rounds=first // 2)
    b = _rounds_trained(cfg, half, run_id=5, rounds=30)
    assert a == first // 2 and a + b == first


@pytest.mark.parametrize("damage", [
    lambda p: p.write_bytes(b"\x00garbage"),
    lambda p: torch.save(torch.ones(2, 3, dtype=torch.float32), p),
    lambda p: torch.save(torch.tensor([[float("nan"), 1.0, 1.0]], dtype=torch.float64), p),
    lambda p: torch.save(torch.tensor([[-1.0, 1.0, 1.0]], dtype=torch.float64), p),
    lambda p: torch.save(torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64), p),
    lambda p: torch.save(torch.tensor([[1.0, 1.0, 1.5]], dtype=torch.float64), p),
    lambda p: torch.save(torch.tensor([[1.0, 1.0, float("inf")]], dtype=torch.float64), p),
    lambda p: torch.save({"rows": []}, p),
])
def test_a_node_whose_spending_cannot_be_read_refuses_rather_than_forgets(tiny_cfg, tmp_path, damage):
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, noise_multiplier=1.5, num_server_rounds=3)
    assert _rounds_trained(cfg, tmp_path, run_id=1, rounds=1) == 1
    (path,) = (tmp_path / "node" / ".privacy-spent").glob("*.pt")
    damage(path)
    context, message = _node(cfg, tmp_path, run_id=1)
    with pytest.raises(PrivacyRefusal, match="cannot be read"):
        client_train(message(2), context)


def test_what_the_node_spent_is_the_runs_own_ledger_summed_over_runs(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(strategy="dp-fedavg", noise_multiplier=2.0, num_server_rounds=3)
    for run_id in (1, 2):
        assert _rounds_trained(cfg, tmp_path, run_id, rounds=3, node_config={"max-epsilon": 1e9}) == 3
    (path,) = (tmp_path / "node" / ".privacy-spent").glob("*.pt")
    rows = torch.load(path, weights_only=True)
    release = ClientCore(cfg, 0).expected_release()
    assert rows.tolist() == [[release.noise_multiplier, release.sample_rate, 6 * release.steps]]


def test_two_runs_on_one_node_take_turns_with_its_count(tmp_path):
    """Concurrent runs of one SuperNode: the count is read, admitted on and added to under one lock."""

    def spend():
        spending = NodeSpending(tmp_path, 0)
        for _ in range(20):
            with spending.locked() as spent:
                spending.add(spent, Release(1.0, 1.0, 1))

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert NodeSpending(tmp_path, 0).history() == [Release(1.0, 1.0, 80)]


@pytest.mark.parametrize("state_dir, reason", [
    ("afile", "Not a directory|File exists"),
    ("afile/sub", "Not a directory"),
    ("\x00bad", "null byte"),
])
def test_a_state_dir_the_client_cannot_write_is_refused_before_it_trains(tiny_cfg, tmp_path, state_dir, reason):
    """Refused naming the key, before the client computes a release it could then not save."""
    (tmp_path / "afile").write_text("x")
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, noise_multiplier=1.5)
    path = state_dir if state_dir.startswith("\x00") else str(tmp_path / state_dir)
    context, message = _node(cfg, tmp_path, run_id=1, node_config={"state-dir": path, "max-epsilon": 50.0})
    with pytest.raises(ConfigError, match=f"node config state-dir .*cannot be this client's state directory.*({reason})"):
        client_train(message(1), context)
    assert "privacy-ledger" not in context.state.array_records
    no_floor = {"max-epsilon": None, "state-dir": None, "privacy-delta": None}
    context, message = _node(cfg.replace(client_state_dir=path), tmp_path, run_id=1, node_config=no_floor)
    with pytest.raises(ConfigError, match="^client-state-dir .*cannot be this client's state directory"):
        client_train(message(1), context)


def test_a_node_with_a_floor_reports_no_evaluation_metrics(tiny_cfg, tmp_path):
    """Federated evaluation (a non-private run's) asks for a noiseless loss and accuracy of the node's own
    examples: the release without noise that its floor refuses, on the evaluation path as on training."""
    cfg = tiny_cfg.replace(evaluation="federated", num_server_rounds=2)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    strategy = FlDpStrategy(ServerCore(cfg))

    (request, *_) = strategy.configure_evaluate(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid([7, 8, 9, 10]))
    base = {"partition-id": 0, "num-partitions": 4}
    context = Context(run_id=1, node_id=7, node_config=base, state=RecordDict(), run_config=cfg.to_flwr())
    assert "metrics" in client_evaluate(request, context).content.metric_records  # no floor: it reports
    for floor in ({"min-noise-multiplier": 0.5}, {"max-epsilon": 8.0, "state-dir": str(tmp_path)}):
        context = Context(run_id=1, node_id=7, node_config={**base, **floor}, state=RecordDict(), run_config=cfg.to_flwr())
        with pytest.raises(PrivacyRefusal, match="reports no metrics of its own data"):
            client_evaluate(request, context)
