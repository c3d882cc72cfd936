"""Federated evaluation: clients test the global model on their held-out data; the server trusts no report."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from clients.client_app import evaluate as client_evaluate
from clients.client_app import train as client_train
from fl_dp.client import ClientCore
from fl_dp.config import ConfigError
from fl_dp.data import ArrayDataset, load_dataset
from fl_dp.federated_evaluation import check_report, combine, evaluation_cohort, split_held_out
from fl_dp.inprocess import InProcessFederation, run_inprocess
from fl_dp.server import ServerCore
from fl_dp.wire import MalformedMessage
from strategies.fl_dp_strategy import FlDpStrategy
from flower_fakes import FakeGrid, contexts_for


pytestmark = pytest.mark.usefixtures("flower_task")


@pytest.fixture
def fed_cfg(tiny_cfg):
    return tiny_cfg.replace(evaluation="federated", num_server_rounds=4, client_lr=0.5, local_epochs=2)


GOOD = {"num-examples": 40.0, "test-loss": 0.5, "test-accuracy": 0.75}


def test_held_out_split_is_seeded_disjoint_and_complete():
    data = ArrayDataset(torch.arange(20.0).reshape(10, 2), torch.arange(10) % 2, 2)
    train, held = split_held_out(data, 0.3, seed=0, partition_id=3)
    again_train, again_held = split_held_out(data, 0.3, seed=0, partition_id=3)
    assert torch.equal(held.x, again_held.x) and torch.equal(train.x, again_train.x)
    assert len(held) == 3 and len(train) == 7
    rows = sorted(train.x[:, 0].tolist() + held.x[:, 0].tolist())
    assert rows == data.x[:, 0].tolist()
    _, other = split_held_out(data, 0.3, seed=0, partition_id=4)
    assert not torch.equal(other.x, held.x)  # each client its own draw
    with pytest.raises(ConfigError, match="held-out-fraction"):
        split_held_out(data.subset(np.arange(1)), 0.3, seed=0, partition_id=0)


def test_a_held_out_fraction_that_leaves_some_client_nothing_to_train_on_is_refused_before_round_one(tiny_cfg):
    """Each client splits its examples when it first trains: a middle client of 4 examples, at 0.9,
    failed in round 1 (in-process the run stopped there), though clients 0 and N-1 had 5."""
    cfg = tiny_cfg.replace(
        evaluation="federated", partitioner="pathological", pathological_classes=1, num_clients=300, clients_per_round=300
    )
    with pytest.raises(ConfigError, match="held-out-fraction 0.9: client [0-9]+ has 4 example"):
        ServerCore(cfg.replace(held_out_fraction=0.9))
    ServerCore(cfg.replace(held_out_fraction=0.7))  # 4 examples keep 3 out and train on 1


@pytest.mark.parametrize("bad, reason", [
    ({**GOOD, "extra": 1.0}, "exactly"),
    ({k: v for k, v in GOOD.items() if k != "test-loss"}, "exactly"),
    ({**GOOD, "test-accuracy": 1.5}, "in \\[0, 1\\]"),
    ({**GOOD, "test-accuracy": math.nan}, "finite"),
    ({**GOOD, "test-loss": -1.0}, ">= 0"),
    ({**GOOD, "test-loss": math.inf}, "finite"),
    ({**GOOD, "num-examples": 0.0}, "integer in"),
    ({**GOOD, "num-examples": 2.5}, "integer in"),
    ({**GOOD, "num-examples": 1e12}, "integer in"),
    ({**GOOD, "num-examples": True}, "finite number"),
    ({**GOOD, "test-accuracy": [0.5]}, "finite number"),
    (None, "got NoneType"),
    ([0.5, 0.75], "got list"),
    ({**GOOD, 7: 1.0}, "exactly"),
])
def test_a_report_out_of_its_domain_is_rejected(bad, reason):
    assert check_report(GOOD) == (40, 0.5, 0.75)
    with pytest.raises(MalformedMessage, match=reason):
        check_report(bad)


def test_a_client_lying_about_its_size_weighs_no_more_than_a_typical_one():
    honest = [(100, 0.7, 0.5)] * 4
    liar = (10**9, 0.0, 1.0)
    combined = combine(honest + [liar])
    assert combined["test-accuracy"] == pytest.approx((4 * 100 * 0.5 + 100 * 1.0) / 500)
    assert combine(honest)["test-accuracy"] == pytest.approx(0.5)
    # honest unequal sizes below the median keep their example weights
    assert combine([(10, 1.0, 1.0), (30, 1.0, 0.0), (30, 1.0, 0.0)])["test-accuracy"] == pytest.approx(10 / 70)
    assert combine([]) == {}


def test_the_evaluation_cohort_is_seeded_and_apart_from_training():
    nodes = list(range(100, 120))
    first = evaluation_cohort(nodes, 5, seed=0, server_round=3)
    # another run's node ids in the same order (a simulation's, in registration order): the same places drawn
    renamed = [7_000 + 3 * n for n in nodes]
    assert evaluation_cohort(renamed, 5, seed=0, server_round=3) == [7_000 + 3 * n for n in first]
    assert len(set(first)) == 5 and set(first) <= set(nodes)
    assert evaluation_cohort(nodes, 5, seed=0, server_round=4) != first
    assert evaluation_cohort(nodes, 0, seed=0, server_round=3) == nodes


@pytest.mark.parametrize("changes, key", [
    (dict(evaluation="everywhere"), "evaluation"),
    (dict(evaluation="federated", target_epsilon=4.0, strategy="alpha-normec"), "evaluation"),
    (dict(evaluation="federated", noise_multiplier=1.0, strategy="alpha-normec"), "evaluation"),
    (dict(evaluation="federated", privacy_model="central", strategy="alpha-normec"), "evaluation"),
    (dict(held_out_fraction=0.0), "held-out-fraction"),
    (dict(held_out_fraction=1.0), "held-out-fraction"),
    (dict(evaluation_clients=-1), "evaluation-clients"),
    (dict(dataset="schema:4:2"), "evaluation = 'federated'"),
    (dict(dataset="schema:4", evaluation="federated"), "dataset"),
    (dict(dataset="schema:0x3:2", evaluation="federated"), "dataset"),
    (dict(dataset="schema:4:1", evaluation="federated"), "dataset"),
])
def test_bad_evaluation_configs_name_their_key(tiny_cfg, changes, key):
    with pytest.raises(ConfigError, match=key):
        tiny_cfg.replace(**changes)


def test_in_process_federated_evaluation_learns_and_counts_its_clients(fed_cfg):
    history = run_inprocess(fed_cfg)
    assert list(history["evaluated-clients"]) == [4, 4, 4, 4]
    assert list(history["evaluation-rejected"]) == [0, 0, 0, 0]
    assert history["test-accuracy"].iloc[-1] > 0.75
    some = run_inprocess(fed_cfg.replace(evaluation_clients=2, eval_every=2))
    assert some["evaluated-clients"].tolist()[1::2] == [2, 2]
    assert some["test-accuracy"].isna().tolist() == [True, False, True, False]


def test_federated_evaluation_holds_out_data_and_central_evaluation_does_not(tiny_cfg, fed_cfg):
    central, federated = ClientCore(tiny_cfg, 0), ClientCore(fed_cfg, 0)
    assert len(federated.objective.data) + len(federated.held_out.data) == len(central.objective.data)
    assert len(federated.held_out.data) == round(0.2 * len(central.objective.data))
    with pytest.raises(MalformedMessage, match="evaluation = 'central'"):
        central.evaluate({"x": np.zeros(central.objective.dim, np.float32)})
    with pytest.raises(MalformedMessage, match="finite"):
        federated.evaluate({"x": np.full(federated.objective.dim, np.nan, np.float32)})



def _run_flower(cfg, contexts, corrupt=None):
    node_ids = list(contexts)
    strategy = FlDpStrategy(ServerCore(cfg))
    grid = FakeGrid(node_ids)
    arrays = strategy.initial_arrays()
    for server_round in range(1, cfg.num_server_rounds + 1):
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        arrays, _ = strategy.aggregate_train(server_round, [client_train(m, contexts[m.metadata.dst_node_id]) for m in messages])
        requests = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        replies = [client_evaluate(m, contexts[m.metadata.dst_node_id]) for m in requests]
        if corrupt is not None:
            replies = corrupt(replies, requests)
        strategy.aggregate_evaluate(server_round, replies)
        strategy.evaluate(server_round, arrays)  # as Flower's loop does after each round
    return strategy


def test_flower_path_and_in_process_loop_give_the_same_federated_evaluation(fed_cfg):
    strategy = _run_flower(fed_cfg, contexts_for(fed_cfg, [101, 102, 103, 104]))
    flower = strategy.core.history()
    inprocess = InProcessFederation(fed_cfg).run()
    for column in ("test-accuracy", "test-loss", "evaluated-clients"):
        assert np.allclose(flower[column], inprocess[column], atol=1e-6), column
    # under central evaluation no evaluation message is sent
    central = FlDpStrategy(ServerCore(fed_cfg.replace(evaluation="central")))
    assert list(central.configure_evaluate(1, central.initial_arrays(), ConfigRecord(), FakeGrid([101]))) == []


def test_hostile_evaluation_replies_are_rejected_and_the_run_goes_on(fed_cfg):
    honest_accuracy = []

    def corrupt(replies, requests):
        replies[0] = Message(Error(code=0, reason="ClientApp crashed"), reply_to=requests[0])
        replies[1].content.metric_records["metrics"]["test-accuracy"] = 7.0
        replies[2].content = RecordDict({"metrics": MetricRecord({"num-examples": 1e9, "test-loss": 0.0, "test-accuracy": 1.0})})
        honest_accuracy.append(replies[3].content.metric_records["metrics"]["test-accuracy"])
        return replies

    strategy = _run_flower(fed_cfg, contexts_for(fed_cfg, [101, 102, 103, 104]), corrupt)
    history = strategy.core.history()
    assert list(history["evaluated-clients"]) == [2] * 4 and list(history["evaluation-rejected"]) == [2] * 4
    assert "ClientApp crashed" in history["rejections"].iloc[-1]
    assert "test-accuracy must be in [0, 1]" in history["rejections"].iloc[-1]
    # the liar's 1e9 examples weigh as much as the one honest report left, no more
    assert history["test-accuracy"].tolist() == pytest.approx([(a + 1.0) / 2 for a in honest_accuracy])
    honest = _run_flower(fed_cfg, contexts_for(fed_cfg, [101, 102, 103, 104]))
    assert torch.equal(strategy.core.x, honest.core.x)  # training untouched by what evaluation received


def test_only_the_asked_clients_report_an_evaluation_and_each_once(fed_cfg):
    from fl_dp.wire import Reply

    fed = InProcessFederation(fed_cfg.replace(num_clients=6, evaluation_clients=2))
    fed.train_cohort(1)
    fed.server.aggregate(1, [])
    asked = fed.server.evaluation_cohort(list(fed.clients), 1)
    outsider = next(cid for cid in fed.clients if cid not in asked)
    honest = [Reply(cid, {}, {**GOOD, "test-accuracy": 0.25}) for cid in asked]
    flattering = {**GOOD, "test-accuracy": 1.0}
    strays = [Reply(outsider, {}, flattering), Reply("no-such-node", {}, flattering), Reply(asked[0], {}, flattering)]
    metrics = fed.server.aggregate_evaluation(1, honest + strays)
    assert metrics["evaluated-clients"] == 2 and metrics["evaluation-rejected"] == 3
    assert metrics["test-accuracy"] == pytest.approx(0.25)
    rejections = fed.server.rows[-1]["rejections"]
    assert f"{outsider}: evaluation: not asked" in rejections and f"{asked[0]}: evaluation: a second report" in rejections
    # a round nobody was asked to evaluate takes no report at all
    assert fed.server.aggregate_evaluation(2, honest)["evaluated-clients"] == 0


def _site_file(path, rows, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 3))
    pd.DataFrame({"f1": x[:, 0], "f2": x[:, 1], "f3": x[:, 2], "label": (x[:, 0] > 0).astype(int)}).to_csv(path, index=False)


def test_a_server_without_data_and_supernodes_with_their_own_files(tiny_cfg, tmp_path):
    _site_file(tmp_path / "site-0.csv", 80, 1)
    _site_file(tmp_path / "site-1.csv", 40, 2)
    cfg = tiny_cfg.replace(dataset="schema:3:2", evaluation="federated", num_clients=2, clients_per_round=2,
                           num_server_rounds=5, client_lr=0.5, local_epochs=3)
    assert len(load_dataset("schema:3:2").test) == 0
    contexts = contexts_for(cfg, [101, 102])
    for i, context in enumerate(contexts.values()):
        context.node_config["data-path"] = str(tmp_path / f"site-{i}.csv")
    history = _run_flower(cfg, contexts).core.history()
    assert list(history["accepted"]) == [2] * 5 and list(history["evaluated-clients"]) == [2] * 5
    assert history["test-accuracy"].iloc[-1] > 0.8  # the sites' rule is linear
    # a node without its own data has nothing to train on under a schema-only dataset
    with pytest.raises(ConfigError, match="node config data-path"):
        ClientCore(cfg, 0)


def test_a_schema_dataset_that_does_not_fit_the_files_is_refused(tiny_cfg, tmp_path):
    _site_file(tmp_path / "site-0.csv", 20, 1)
    cfg = tiny_cfg.replace(dataset="schema:5:2", evaluation="federated", num_clients=1, clients_per_round=1)
    context = contexts_for(cfg, [101])[101]
    context.node_config["data-path"] = str(tmp_path / "site-0.csv")
    strategy = FlDpStrategy(ServerCore(cfg))
    message = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), FakeGrid([101])))[0]
    with pytest.raises(ConfigError, match="inputs of shape"):
        client_train(message, context)
