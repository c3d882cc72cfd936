"""Clients that trust no server: the node operator's privacy floor, from the SuperNode's node config."""

import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import train as client_train
from fl_dp.config import ConfigError
from fl_dp.client import ClientCore
from fl_dp.server import ServerCore
from fl_dp.privacy import Release, epsilon_of
from fl_dp.privacy_floor import PrivacyFloor, PrivacyRefusal
from strategies.fl_dp_strategy import FlDpStrategy


def test_the_floor_is_read_from_node_config_only_when_set():
    assert PrivacyFloor.from_node_config({"partition-id": 0, "num-partitions": 4}) is None
    floor = PrivacyFloor.from_node_config({"max-epsilon": 3, "min-noise-multiplier": 0.5})
    assert floor == PrivacyFloor(max_epsilon=3.0, delta=1e-5, min_noise_multiplier=0.5)
    assert PrivacyFloor.from_node_config({"privacy-delta": 1e-6}).delta == 1e-6
    for bad in ({"max-epsilon": "8"}, {"max-epsilon": -1.0}, {"min-noise-multiplier": True}, {"privacy-delta": 2.0}):
        with pytest.raises(ValueError):
            PrivacyFloor.from_node_config(bad)


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

    class Grid:
        def get_node_ids(self):
            return [7, 8, 9, 10]

    message = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), Grid()))[0]

    def context(node_config):
        return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=cfg.to_flwr())

    base = {"partition-id": 0, "num-partitions": 4}
    with pytest.raises(PrivacyRefusal, match="min-noise-multiplier 0.5"):
        client_train(message, context({**base, "min-noise-multiplier": 0.5}))
    with pytest.raises(ConfigError, match="max-epsilon must be a number"):
        client_train(message, context({**base, "max-epsilon": "lots"}))
    reply = client_train(message, context({**base, "min-noise-multiplier": 0.2}))
    assert "metrics" in reply.content.metric_records
