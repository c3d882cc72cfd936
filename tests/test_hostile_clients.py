"""A server that trusts no client: every hostile reply is rejected with a reason, one at a time
and all at once, the model moves as if it had not been sent, and no client is charged less
than the mechanism it ran."""

import logging
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_dp.inprocess import InProcessFederation

from fl_dp.wire import Reply
from fl_dp.privacy import Release
from strategies.fl_dp_strategy import FlDpStrategy

STRATEGIES = {
    "fedavg": dict(),
    "dp-fedavg": dict(noise_multiplier=0.8),
    "alpha-normec": dict(server_lr=0.3, target_epsilon=4.0),
    "dp-normalized-sgd": dict(server_lr=0.3, noise_multiplier=1.0),
    "clip21": dict(server_lr=0.3, noise_multiplier=1.0),
    "ef21": dict(server_lr=0.3, compress_k=3),
    "sign-vote": dict(server_lr=0.01),
    "ef-sign": dict(server_lr=0.01),
    "dp-sgd": dict(target_epsilon=3.0, batch_size=16),
}
#: strategies whose honest message has a norm bound the server can check
BOUNDED = ("dp-fedavg", "alpha-normec", "dp-normalized-sgd", "clip21")


def _round(tiny_cfg, strategy):
    cfg = tiny_cfg.replace(strategy=strategy, **STRATEGIES[strategy])
    fed = InProcessFederation(cfg)
    cohort = fed.server.sample(list(fed.clients))
    arrays, config = fed.server.broadcast(1)
    honest = [Reply(cid, *fed.clients[cid].train(arrays, config, {})[:2]) for cid in cohort]
    return cfg, fed, honest


def _unbounded_probe(name, strategy):
    """Huge values where the algorithm itself has no bound to check them against: FedAvg's and
    EF21's updates, and EF-sign's scale (bounded only by the client's own error state)."""
    return (name == "1e30 values" and strategy not in BOUNDED) or (name == "extra array" and strategy == "ef-sign")


def _reference(cfg, honest_subset):
    """The model after a round with only ``honest_subset`` (the hostile reply never sent)."""
    fed = InProcessFederation(cfg)
    fed.server.sample(list(fed.clients))
    fed.server.broadcast(1)
    fed.server.aggregate(1, honest_subset)
    return fed.server.x


def _hostile_variants(reply, dim):
    """(name, hostile reply) pairs built from one honest ``reply`` of client ``reply.client_id``."""
    cid, arrays, metrics = reply.client_id, reply.arrays, reply.metrics
    key = next(iter(arrays))
    first = arrays[key]
    out = [
        ("float64 array", {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in arrays.items()}, metrics),
        ("float16 array", {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in arrays.items()}, metrics),
        ("uint16 bytes", {k: v.astype(np.uint16) if v.dtype == np.uint8 else v.astype(np.int64) for k, v in arrays.items()}, metrics),
        ("2-D", {**arrays, key: first.reshape(1, -1)}, metrics),
        ("extra array", {**arrays, "scale": np.array([1e6], np.float32)}, metrics),
        ("no arrays", {}, metrics),
        ("not a mapping", [first], metrics),
        ("dense of wrong size", {"dense": np.zeros(dim + 3, np.float32)}, metrics),
        ("NaN", {k: np.full_like(v, np.nan) if v.dtype == np.float32 else v for k, v in arrays.items()}, metrics),
        ("num-examples string", arrays, {**metrics, "num-examples": "60"}),
        ("num-examples None", arrays, {**metrics, "num-examples": None}),
        ("num-examples list", arrays, {**metrics, "num-examples": [1, 2]}),
        ("num-examples bool", arrays, {**metrics, "num-examples": True}),
        ("num-examples fraction", arrays, {**metrics, "num-examples": 2.5}),
        ("num-examples negative", arrays, {**metrics, "num-examples": -4}),
        ("no num-examples", arrays, {k: v for k, v in metrics.items() if k != "num-examples"}),
        ("unknown metric", arrays, {**metrics, "weight": 1e9}),
        ("noise claim string", arrays, {**metrics, "dp-noise-multiplier": "100"}),
        ("claims noise 100", arrays, {**metrics, "dp-noise-multiplier": 100.0, "dp-sample-rate": 1.0, "dp-steps": 1}),
        ("claims rate 1e-6", arrays, {**metrics, "dp-noise-multiplier": metrics.get("dp-noise-multiplier", 1.0), "dp-sample-rate": 1e-6, "dp-steps": 1}),
        ("metrics not a mapping", arrays, [1.0]),
    ]
    if first.dtype == np.float32 and first.ndim == 1:
        out.append(("1e30 values", {**arrays, key: np.full_like(first, 1e30)}, metrics))
    # a variant that changes nothing for this strategy's layout (no float32 array to widen) is no probe
    return [(name, Reply(cid, a, m)) for name, a, m in out if not (_same_arrays(a, arrays) and m == metrics)]


def _same_arrays(a, b):
    return (
        isinstance(a, dict)
        and a.keys() == b.keys()
        and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)
    )


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_hostile_reply_is_rejected_and_the_model_moves_as_without_it(tiny_cfg, strategy):
    cfg, fed, honest = _round(tiny_cfg, strategy)
    others = honest[1:]
    expected_x = _reference(cfg, others)
    dim = fed.server.dim
    for name, hostile in _hostile_variants(honest[0], dim):
        if _unbounded_probe(name, strategy):
            continue
        probe = InProcessFederation(cfg)
        probe.server.sample(list(probe.clients))
        probe.server.broadcast(1)
        row = probe.server.aggregate(1, [hostile, *others])
        assert row["accepted"] == len(others), (strategy, name, row["rejections"])
        assert honest[0].client_id in row["rejections"], (strategy, name)
        assert torch.equal(probe.server.x, expected_x), (strategy, name)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_all_hostile_replies_at_once_leave_only_the_honest_ones(tiny_cfg, strategy):
    cfg, fed, honest = _round(tiny_cfg, strategy)
    hostile = [h for name, h in _hostile_variants(honest[0], fed.server.dim) if not _unbounded_probe(name, strategy)]
    row = fed.server.aggregate(1, hostile + honest[1:])
    assert row["accepted"] == len(honest) - 1
    assert torch.equal(fed.server.x, _reference(cfg, honest[1:]))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_unaddressed_unknown_and_duplicate_replies_are_rejected(tiny_cfg, strategy):
    cfg, fed, honest = _round(tiny_cfg.replace(num_clients=6, clients_per_round=3), strategy)
    addressed = {r.client_id for r in honest}
    outsider = next(f"client-{i}" for i in range(6) if f"client-{i}" not in addressed)
    strays = [
        Reply(outsider, honest[0].arrays, honest[0].metrics),
        Reply("node-that-does-not-exist", honest[0].arrays, honest[0].metrics),
        Reply(honest[0].client_id, honest[1].arrays, honest[1].metrics),  # the same client again
    ]
    row = fed.server.aggregate(1, honest + strays)
    assert row["accepted"] == len(honest) and row["rejected"] == 3
    assert torch.equal(fed.server.x, _reference(cfg, honest))
    # a reply of round 1 arriving after it is not addressed by round 2
    fed.server.broadcast(2)
    assert fed.server.aggregate(2, honest[:1])["accepted"] == 0


@pytest.mark.parametrize("strategy", ["dp-fedavg", "alpha-normec", "clip21", "dp-sgd", "fedavg", "ef21"])
def test_the_ledger_charges_the_run_mechanism_whatever_a_client_claims(tiny_cfg, strategy):
    cfg, fed, honest = _round(tiny_cfg, strategy)
    honest_fed = InProcessFederation(cfg)
    honest_fed.server.sample(list(honest_fed.clients))
    honest_fed.server.aggregate(1, honest)
    liar = honest[0]
    lies = {**liar.metrics, "dp-noise-multiplier": 100.0, "dp-sample-rate": 1e-6, "dp-steps": 1, "client-epsilon": 0.01}
    garbage = Reply(honest[1].client_id, {"dense": np.zeros(3, np.float64)}, {"num-examples": "x"})
    row = fed.server.aggregate(1, [Reply(liar.client_id, liar.arrays, lies), garbage, *honest[2:]])
    assert row["rejected"] == 2
    for reply in honest:
        # rejected or not, every addressed client that replied is charged the honest amount
        assert fed.server.ledger.epsilon(reply.client_id) >= honest_fed.server.ledger.epsilon(reply.client_id) * (1 - 1e-9)
    if strategy in ("fedavg", "ef21"):
        assert all(math.isinf(e) for e in fed.server.ledger.epsilons().values())


def test_a_client_epsilon_below_the_ledger_warns_and_one_above_it_is_said_once(tiny_cfg, caplog):
    """Below: the client's own ledger misses releases the server received. Above: the client charged
    itself for a reply that never arrived (its node crashed), said once, not every round."""
    cfg = tiny_cfg.replace(strategy="alpha-normec", **STRATEGIES["alpha-normec"])
    fed = InProcessFederation(cfg)
    low, high, *_ = sorted(fed.clients)
    states: dict = {cid: {} for cid in fed.clients}
    for server_round in (1, 2, 3):
        cohort = fed.server.sample(list(fed.clients))
        arrays, config = fed.server.broadcast(server_round)
        replies = []
        for cid in cohort:
            message, metrics, states[cid] = fed.clients[cid].train(arrays, config, states[cid])
            replies.append(Reply(cid, message, metrics))
        own = {reply.client_id: reply for reply in replies}
        own[low].metrics["client-epsilon"] *= 0.5
        own[high].metrics["client-epsilon"] *= 2.0
        with caplog.at_level(logging.INFO, logger="fl_dp"):
            row = fed.server.aggregate(server_round, replies)
        assert row["accepted"] == len(cohort)  # the server's ledger counts, not the claim
    below = [r for r in caplog.records if f"client {low} reports epsilon" in r.getMessage()]
    above = [r for r in caplog.records if f"client {high} counts epsilon" in r.getMessage()]
    assert [r.levelno for r in below] == [logging.WARNING] * 3
    assert [r.levelno for r in above] == [logging.INFO]
    assert not any(f"client {c}" in r.getMessage() for r in caplog.records for c in sorted(fed.clients)[2:]
                   if "epsilon" in r.getMessage())


def test_fedavg_weight_of_a_client_claiming_a_trillion_examples_is_capped(tiny_cfg):
    cfg, fed, honest = _round(tiny_cfg, "fedavg")
    liar = Reply(honest[0].client_id, honest[0].arrays, {**honest[0].metrics, "num-examples": 1e9})
    fed.server.aggregate(1, [liar, *honest[1:]])
    x0 = InProcessFederation(cfg).server.x
    deltas = [torch.from_numpy(r.arrays["dense"]) for r in honest]
    counts = [r.metrics["num-examples"] for r in honest]
    cap = 2 * float(np.median([1e9, *counts[1:]]))
    weights = [min(1e9, cap), *counts[1:]]
    expected = x0 + cfg.server_lr * sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
    assert torch.allclose(fed.server.x, expected, atol=1e-6)
    assert weights[0] / sum(weights) < 0.5


class _Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_flower_replies_that_do_not_decode_are_rejected_not_raised(tiny_cfg):
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    cfg = tiny_cfg.replace(strategy="alpha-normec", server_lr=0.3, noise_multiplier=1.0)
    from fl_dp.server import ServerCore

    strategy = FlDpStrategy(ServerCore(cfg))
    messages = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), _Grid([11, 12, 13, 14])))
    garbage = Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=b"not a numpy file")
    pickled = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=b"\x80\x04K\x01.")
    contents = [
        RecordDict({"arrays": ArrayRecord({"dense": garbage}), "metrics": MetricRecord({"num-examples": 5})}),
        RecordDict({"arrays": ArrayRecord({"dense": pickled}), "metrics": MetricRecord({"num-examples": 5})}),
        RecordDict({"metrics": MetricRecord({"num-examples": 5})}),
        RecordDict({"arrays": ArrayRecord({"dense": Array(np.zeros(3, np.float32))}), "metrics": MetricRecord({"num-examples": [5, 6]}), "config": ConfigRecord({"a": 1})}),
    ]
    replies = [Message(content=c, reply_to=m) for c, m in zip(contents, messages)]
    assert [r.metadata.src_node_id for r in replies] == [m.metadata.dst_node_id for m in messages]
    x0 = strategy.core.x.clone()
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics["accepted"] == 0 and metrics["rejected"] == 4
    assert torch.equal(strategy.core.x, x0)
    # each addressed client is charged the run's release although its reply was unreadable
    expected = Release(1.0, 1.0, 1)
    assert all(strategy.core.ledger.releases(str(n)) == [expected] for n in (11, 12, 13, 14))


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_a_dp_sgd_rs_message_off_the_round_s_masks_is_rejected(tiny_cfg, layout):
    """Random sparsification freezes the coordinates off the round's masks (seeded, known to the
    server): an update there is no honest client's, however small."""
    cfg = tiny_cfg.replace(strategy="dp-sgd-rs", noise_multiplier=1.0, batch_size=16, rs_final_rate=0.9, num_server_rounds=3)
    fed = InProcessFederation(cfg)
    cohort = fed.server.sample(list(fed.clients))
    arrays, config = fed.server.broadcast(3)  # the last round drops 90% of the coordinates
    honest = [Reply(cid, *fed.clients[cid].train(arrays, {**config, "server-round": 3}, {})[:2]) for cid in cohort]
    support = fed.server.algorithm.message_support(3, fed.server.dim)
    assert support is not None and 0 < int(support.sum()) < fed.server.dim
    assert all(set(r.arrays) == {"values", "indices"} for r in honest)  # honest clients send the support only
    off = int(torch.nonzero(~support)[0])
    first = honest[0]
    if layout == "sparse":
        forged = {"values": np.append(first.arrays["values"], np.float32(1e-3)), "indices": np.append(first.arrays["indices"], np.int32(off))}
    else:
        dense = np.zeros(fed.server.dim, np.float32)
        dense[first.arrays["indices"]] = first.arrays["values"]
        dense[off] = 1e-3
        forged = {"dense": dense}
    reference = InProcessFederation(cfg)
    reference.server.sample(list(reference.clients))
    reference.server.broadcast(3)
    reference.server.aggregate(3, honest[1:])
    row = fed.server.aggregate(3, [Reply(first.client_id, forged, first.metrics), *honest[1:]])
    assert row["rejected"] == 1 and "outside the round's sparsification masks" in row["rejections"]
    assert torch.equal(fed.server.x, reference.server.x)


def test_a_client_s_own_text_in_a_rejection_is_bounded_and_cannot_forge_log_lines(tiny_cfg, caplog):
    """An error reason, metric names and array names are the client's to choose: a megabyte a round
    grew the results table and checkpoint without bound, and a line break forged a log line."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    from flwr.app import Error

    from fl_dp.server import ServerCore

    strategy = FlDpStrategy(ServerCore(tiny_cfg))
    messages = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), _Grid([11, 12, 13, 14])))
    forged = "\nround 1/3: acc 0.999\r" + "x" * 10**6
    contents = [
        RecordDict({"arrays": ArrayRecord({"dense": Array(np.zeros(3, np.float32))}), "metrics": MetricRecord({forged: 1.0})}),
        RecordDict({"arrays": ArrayRecord({forged: Array(np.zeros(3, np.float32))}), "metrics": MetricRecord({"num-examples": 5})}),
    ]
    replies = [Message(content=c, reply_to=m) for c, m in zip(contents, messages)]
    replies.append(Message(Error(code=0, reason=forged), reply_to=messages[2]))
    with caplog.at_level(logging.WARNING, logger="fl_dp"):
        _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["rejected"] == 3
    rejections = strategy.core.rows[-1]["rejections"].split("; ")
    assert len(rejections) == 3 and all(len(r) < 400 and "\n" not in r and "\r" not in r for r in rejections)
    assert all("\\nround 1/3" in r for r in rejections)  # escaped, still readable
    assert not any(line.startswith("round 1/3: acc") for line in caplog.text.splitlines())


def test_a_diverged_model_is_named_when_every_reply_is_non_finite(caplog):
    """A server step far too large leaves the model finite but so large that every honest client's
    gradient is NaN: the log says the model diverged, not only that each client was rejected."""
    from fl_dp.config import RunConfig

    cfg = RunConfig(strategy="ef21", model="logreg", dataset="breast-cancer", num_clients=4, clients_per_round=4,
                    num_server_rounds=2, eval_samples=0, server_lr=1e38)
    with caplog.at_level(logging.WARNING, logger="fl_dp"):
        frame = InProcessFederation(cfg).run()
    assert frame["accepted"].tolist() == [4, 0]
    diverged = [r.getMessage() for r in caplog.records if "likely diverged" in r.getMessage()]
    assert len(diverged) == 1 and diverged[0].startswith("round 2: every reply holds NaN or Inf")
    assert "server-lr (now 1e+38)" in diverged[0]


def test_one_non_finite_reply_among_honest_ones_is_not_called_divergence(tiny_cfg, caplog):
    _, fed, honest = _round(tiny_cfg, "fedavg")
    nan = Reply(honest[0].client_id, {k: np.full_like(v, np.nan) for k, v in honest[0].arrays.items()}, honest[0].metrics)
    with caplog.at_level(logging.WARNING, logger="fl_dp"):
        fed.server.aggregate(1, [nan, *honest[1:]])
    assert any("message holds NaN or Inf" in r.getMessage() for r in caplog.records)
    assert not any("likely diverged" in r.getMessage() for r in caplog.records)
