"""Runs that survive faults: dropouts, lost client state, a server resumed from its checkpoint."""

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from clients.client_app import train as client_train
from fl_dp import checkpoint
from fl_dp.checkpoint import checkpoint_path, ledger_journal_path, write_checkpoint
from fl_dp.client_state import ClientStateStore
from fl_dp.config import ConfigError
from fl_dp.wire import LEDGER_STATE, Reply
from fl_dp.inprocess import InProcessFederation
from fl_dp.server import ServerCore
from strategies.fl_dp_strategy import FlDpStrategy
from flower_fakes import FakeGrid

TIMING = {"round-seconds"}


pytestmark = pytest.mark.usefixtures("flower_task")


def _rows(rows):
    """The metrics rows without wall times, NaN equal to NaN."""
    return pd.DataFrame(rows).drop(columns=list(TIMING))


# ---------------------------------------------------------------- dropouts


def _honest_replies(cfg, server, cohort, server_round):
    fed = InProcessFederation(cfg)
    arrays, config = server.broadcast(server_round)
    return [Reply(c, *fed.clients[c].train(arrays, config, {})[:2]) for c in cohort]


def test_a_cohort_is_drawn_from_the_clients_connected_now(tiny_cfg):
    server = ServerCore(tiny_cfg.replace(clients_per_round=3))
    cohort = server.sample(["client-0", "client-2"])  # two of four connected
    assert sorted(cohort) == ["client-0", "client-2"]
    row = server.aggregate(1, _honest_replies(tiny_cfg, server, cohort, 1))
    assert row["accepted"] == 2 and row["skipped"] == ""


def test_too_few_connected_skips_the_round_without_release_or_charge(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="alpha-normec", noise_multiplier=1.0, min_clients_per_round=3)
    server = ServerCore(cfg)
    x = server.x.clone()
    assert server.sample(["client-0", "client-1"]) == []
    row = server.aggregate(1, [])
    assert row["skipped"] == "2 clients connected, min-clients-per-round is 3"
    assert torch.equal(server.x, x) and server.ledger.epsilons() == {}
    # the clients come back: the next round samples them again
    assert len(server.sample([f"client-{i}" for i in range(4)])) == 4


def test_too_few_replies_skip_the_update_but_the_repliers_are_charged(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="alpha-normec", noise_multiplier=1.0, min_clients_per_round=3)
    server = ServerCore(cfg)
    x = server.x.clone()
    cohort = server.sample([f"client-{i}" for i in range(4)])
    replies = _honest_replies(cfg, server, cohort, 1)[:2]  # two dropped out
    row = server.aggregate(1, replies, failures=[(c, "node unavailable") for c in cohort[2:]])
    assert row["skipped"] == "2 replies accepted, min-clients-per-round is 3"
    assert torch.equal(server.x, x)
    assert set(server.ledger.epsilons()) == {str(c) for c in cohort[:2]}


def test_central_dp_releases_every_drawn_round_whoever_replies(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="alpha-normec", privacy_model="central", noise_multiplier=1.0, min_clients_per_round=3)
    server = ServerCore(cfg)
    x = server.x.clone()
    population = [f"client-{i}" for i in range(4)]
    server.sample(population)
    row = server.aggregate(1, [])  # every sampled client dropped out: the noised sum is still released
    assert row["skipped"] == "" and not torch.equal(server.x, x)
    assert set(server.ledger.epsilons()) == set(population)


# ---------------------------------------------------------------- server checkpoints


RESUMABLE = [
    ("alpha-normec", dict(privacy_model="central", target_epsilon=5.0, num_clients=12, clients_per_round=4)),
    ("dp-fedavg", dict(privacy_model="distributed", target_epsilon=5.0, num_clients=12, clients_per_round=4)),
    ("ef21-sgdm-norm", dict(clients_per_round=2, compress_k=3)),
    ("dp-sgd-rs", dict(target_epsilon=5.0, batch_size=16, clients_per_round=2)),
    ("sign-vote", dict(sign_compressor="dp-sign", round_epsilon=1.0, clients_per_round=3)),
]


@pytest.mark.parametrize("strategy, extra", RESUMABLE)
def test_a_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tiny_cfg, tmp_path, strategy, extra):
    cfg = tiny_cfg.replace(strategy=strategy, num_server_rounds=6, checkpoint_every=2, results_dir=str(tmp_path), **extra)
    whole = InProcessFederation(cfg.replace(run_name="whole"))
    whole.run()
    interrupted = InProcessFederation(cfg)
    interrupted.run(stop_after=4)  # stopped right after a checkpoint
    resumed = InProcessFederation(cfg.replace(resume=True))
    assert resumed.server.completed_rounds == 4
    resumed.run()
    assert torch.equal(resumed.server.x, whole.server.x)
    assert resumed.server.ledger.state_dict() == whole.server.ledger.state_dict()
    pd.testing.assert_frame_equal(_rows(resumed.server.rows), _rows(whole.server.rows))
    assert all(torch.equal(resumed.states[c][k], whole.states[c][k]) for c in whole.states for k in whole.states[c])


def test_rounds_after_the_last_checkpoint_are_replayed_and_charged_again(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(strategy="alpha-normec", noise_multiplier=1.0, num_server_rounds=6, checkpoint_every=2,
                           results_dir=str(tmp_path))
    whole = InProcessFederation(cfg.replace(run_name="whole"))
    whole.run()
    InProcessFederation(cfg).run(stop_after=3)  # round 3 released, then lost
    resumed = InProcessFederation(cfg.replace(resume=True))
    assert resumed.server.completed_rounds == 2
    resumed.run()
    assert torch.equal(resumed.server.x, whole.server.x)
    for client, eps in whole.server.ledger.epsilons().items():
        # never charged less than what was released: round 3 went out twice
        assert resumed.server.ledger.epsilon(client) > eps


def test_resume_without_a_checkpoint_starts_at_round_one(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg.replace(results_dir=str(tmp_path), checkpoint_every=1, resume=True)
    with caplog.at_level(logging.INFO, logger="fl_dp"):
        fed = InProcessFederation(cfg)
    assert fed.server.completed_rounds == 0 and "no checkpoint" in caplog.text


def _checkpointed(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(strategy="alpha-normec", noise_multiplier=1.0, checkpoint_every=1, results_dir=str(tmp_path))
    InProcessFederation(cfg).run(stop_after=2)
    return cfg, checkpoint_path(cfg)


def _forge(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    write_checkpoint(path, {k: v for k, v in payload.items() if k != "format"})


@pytest.mark.parametrize("forgery, message", [
    (lambda p: p.write_bytes(b"not a checkpoint"), "unreadable"),
    (lambda p: torch.save({"format": "other"}, p), "not an fl-dp-checkpoint/1 file"),
    (lambda p: _forge(p, round=99), "outside"),
    (lambda p: _forge(p, x=torch.zeros(3)), "x is not a finite float32 vector"),
    (lambda p: _forge(p, x=torch.full((2 * 20 + 2,), float("nan"))), "x is not a finite"),
    (lambda p: _forge(p, state={"G": torch.zeros(1)}), "server state does not match"),
    (lambda p: _forge(p, ledger={"client-0": [[0.001, 1.0, 1.0]]} | {"client-1": [[-1.0, 1.0, 1.0]]}), "not a valid mechanism"),
    (lambda p: _forge(p, ledger={"client-0": [[1e-300, 1.0, 1.0]]}), "noise multiplier 1e-300 is below"),
    (lambda p: _forge(p, ledger={"client-0": "cheap"}), "lists of releases"),
    (lambda p: _forge(p, ledger={"client-0": [[100.0, 1.0, 2.0]]}), "not this run's mechanism"),
    (lambda p: _forge(p, rng=[3, [1, 2], None]), "state vector is the wrong size"),
    (lambda p: _forge(p, rng="seed"), "RNG state is malformed"),
    (lambda p: _forge(p, rng=[3, [-1] * 625, None]), "RNG state is malformed"),
    (lambda p: _forge(p, rng=[3, [2**70] * 625, None]), "RNG state is malformed"),
    (lambda p: _forge(p, rows=[]), "metrics rows"),
    (lambda p: _forge(p, rows=[{"round": {"a": 1}}, {"round": 2}]), "metrics rows"),
    (lambda p: _forge(p, rows=[{**row, "bytes-down": 2**70} for row in torch.load(p, weights_only=True)["rows"]]), "metrics rows"),
    (lambda p: _forge(p, rows=[{**row, "accepted": float("inf")} for row in torch.load(p, weights_only=True)["rows"]]), "metrics rows"),
    (lambda p: _forge(p, rows=[{**row, "accepted": 2.5} for row in torch.load(p, weights_only=True)["rows"]]), "metrics rows"),
    (lambda p: _forge(p, rows=[{**row, "test-accuracy": 2**70} for row in torch.load(p, weights_only=True)["rows"]]), "metrics rows"),
    (lambda p: _forge(p, rows=[{**row, "test-accuracy": "high"} for row in torch.load(p, weights_only=True)["rows"]]), "metrics rows"),
    (lambda p: _forge(p, rows=[{**row, "skipped": 0.0} for row in torch.load(p, weights_only=True)["rows"]]), "metrics rows"),
    (lambda p: _forge(p, rows=[{k: v for k, v in row.items() if k != "round"} for row in torch.load(p, weights_only=True)["rows"]]),
     "metrics rows"),
    (lambda p: _forge(p, rows=torch.load(p, weights_only=True)["rows"][::-1]), "metrics rows"),
    (lambda p: _forge(p, config={**torch.load(p, weights_only=True)["config"], "seed": torch.zeros(3)}), "other values of seed"),
    (lambda p: _forge(p, clients={"client-0": {"g": torch.zeros(5)}}), "state of client-0: 'g' is not a finite float32 vector"),
    (lambda p: _forge(p, clients={"client-0": {"g": torch.full((2 * 20 + 2,), float("inf"))}}), "'g' is not a finite"),
    (lambda p: _forge(p, clients={"client-0": {"g": torch.zeros(2 * 20 + 2, dtype=torch.float64)}}), "'g' is not a finite"),
    (lambda p: _forge(p, clients={"client-0": {LEDGER_STATE: torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)}}), "not a release"),
    (lambda p: _forge(p, clients={"client-0": {LEDGER_STATE: torch.tensor([[1e-300, 1.0, 1.0]], dtype=torch.float64)}}),
     "not a release \\(noise multiplier 1e-300 is below"),
    (lambda p: _forge(p, clients={"client-0": {LEDGER_STATE: torch.zeros(4)}}), "not finite float64 rows"),
    (lambda p: _forge(p, clients={"client-0": [torch.zeros(3)]}), "maps names to tensors"),
    (lambda p: _forge(p, ledger={"client-0": [[1e300, 1.0, 1.0]]}), "noise multiplier 1e\\+300 is above"),
    (lambda p: _forge(p, clients={"client-0": {LEDGER_STATE: torch.tensor([[1e300, 1.0, 1.0]], dtype=torch.float64)}}),
     "not a release \\(noise multiplier 1e\\+300 is above"),
    (lambda p: _forge(p, clients={7: {}}), "keyed by client id"),
])
def test_a_damaged_or_forged_checkpoint_is_refused_naming_resume(tiny_cfg, tmp_path, forgery, message):
    cfg, path = _checkpointed(tiny_cfg, tmp_path)
    ledger_journal_path(cfg).unlink()
    forgery(path)
    with pytest.raises(ConfigError, match=message) as err:
        InProcessFederation(cfg.replace(resume=True))
    assert str(err.value).startswith("resume: checkpoint")


def _unlike_a_saved_vector(vector):
    """What ``torch.load(weights_only=True)`` hands back in place of a saved float32 vector, named:
    each passes a shape check and fails only where it is used (numpy, autograd, the sum)."""
    return {
        "a Parameter recording gradients": torch.nn.Parameter(vector.clone()),
        "a sparse tensor": vector.to_sparse(),
        "a meta tensor": torch.empty(vector.shape, device="meta"),
        "float64": vector.double(),
        "complex": vector.to(torch.complex64),
    }


@pytest.mark.parametrize("field", ["x", "state", "shares", "clients"])
def test_a_checkpoint_vector_that_is_not_a_plain_float32_tensor_is_refused(tiny_cfg, tmp_path, field):
    cfg, path = _checkpointed(tiny_cfg, tmp_path)
    ledger_journal_path(cfg).unlink()
    saved = torch.load(path, weights_only=True)
    name, vector = {
        "x": ("x", saved["x"]),
        "state": ("G", saved["state"]["G"]),
        "shares": ("client-0", saved["shares"]["client-0"]),
        "clients": ("client-0", saved["clients"]["client-0"]["g"]),
    }[field]
    for kind, forged in _unlike_a_saved_vector(vector).items():
        if field == "x":
            _forge(path, x=forged)
        elif field == "clients":
            _forge(path, clients={**saved["clients"], name: {**saved["clients"][name], "g": forged}})
        else:
            _forge(path, **{field: {**saved[field], name: forged}})
        with pytest.raises(ConfigError, match="^resume: checkpoint"):
            InProcessFederation(cfg.replace(resume=True))
        _forge(path, **saved)  # the true file resumes
        assert InProcessFederation(cfg.replace(resume=True)).server.completed_rounds == 2, kind


def _shortened(ledger):
    """The ledger with client-0's last release one step shorter (or gone): a cheaper history."""
    rows = {client: [list(row) for row in history] for client, history in ledger.items()}
    last = rows["client-0"][-1]
    if last[2] > 1:
        last[2] -= 1.0
    else:
        rows["client-0"].pop()
    return rows


@pytest.mark.parametrize("forgery, message", [
    (lambda p: _forge(p, ledger={}), "not the one in its epsilon summary"),
    (lambda p: _forge(p, ledger=_shortened(torch.load(p, weights_only=True)["ledger"])), "not the one in its epsilon summary"),
    (lambda p: _forge(p, ledger={k: v for k, v in torch.load(p, weights_only=True)["ledger"].items() if k != "client-3"}),
     "not the one in its epsilon summary"),
    (lambda p: _forge(p, ledger={}, summary=[0.0, 0.0, 0.0]), "not the one in its last metrics row"),
    (lambda p: _forge(p, summary="cheap"), "no epsilon summary"),
])
def test_a_checkpoint_whose_ledger_was_edited_alone_is_refused(tiny_cfg, tmp_path, forgery, message):
    cfg, path = _checkpointed(tiny_cfg, tmp_path)
    ledger_journal_path(cfg).unlink()
    forgery(path)
    with pytest.raises(ConfigError, match=message):
        InProcessFederation(cfg.replace(resume=True))


@pytest.mark.parametrize("forgery, message", [
    (lambda p: _forge(p, ledger={}, summary=[0.0, 0.0, 0.0]), r"client-\d is charged less than in the checkpoint"),
    (lambda p: _forge(p, ledger=_shortened(torch.load(p, weights_only=True)["ledger"])), "not the one in its epsilon summary"),
    (lambda p: _forge(p, summary=None), "no epsilon summary"),
    (lambda p: _forge(p, ledger=[]), "not a map of client ids"),
])
def test_a_ledger_journal_that_charges_less_than_its_checkpoint_is_refused(tiny_cfg, tmp_path, forgery, message):
    cfg, _ = _checkpointed(tiny_cfg, tmp_path)
    journal = ledger_journal_path(cfg)
    forgery(journal)
    with pytest.raises(ConfigError, match=message) as err:
        InProcessFederation(cfg.replace(resume=True))
    assert str(err.value).startswith(f"resume: checkpoint {journal}")


def test_a_checkpoint_of_another_config_is_refused(tiny_cfg, tmp_path):
    cfg, _ = _checkpointed(tiny_cfg, tmp_path)
    with pytest.raises(ConfigError, match="other values of noise-multiplier"):
        InProcessFederation(cfg.replace(resume=True, noise_multiplier=2.0))
    # how long a run is may change when it resumes
    assert InProcessFederation(cfg.replace(resume=True, num_server_rounds=5)).server.completed_rounds == 2


def test_a_pickled_object_in_a_checkpoint_never_runs(tiny_cfg, tmp_path):
    cfg, path = _checkpointed(tiny_cfg, tmp_path)

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('ran')",))

    torch.save({"format": "fl-dp-checkpoint/1", "x": Payload()}, path)
    with pytest.raises(ConfigError, match="unreadable"):
        InProcessFederation(cfg.replace(resume=True))


# ---------------------------------------------------------------- client state on disk


def test_a_client_drops_a_damaged_vector_of_its_state_and_refuses_a_damaged_ledger(tiny_cfg, caplog):
    cfg = tiny_cfg.replace(strategy="alpha-normec", noise_multiplier=1.0, server_lr=0.3)
    fed = InProcessFederation(cfg)
    arrays, config = fed.server.broadcast(1)
    client = fed.clients["client-0"]
    _, metrics, state = client.train(arrays, config, {})
    fresh = client.train(arrays, config, {LEDGER_STATE: state[LEDGER_STATE]})
    with caplog.at_level(logging.WARNING, logger="fl_dp"):
        damaged = client.train(arrays, config, {**state, "g": torch.zeros(5)})
    assert "'g' is not a finite float32 vector" in caplog.text
    # as if it had lost g_i, and it says so: the server takes its share out of G
    assert damaged[1]["state-fresh"] == 1.0 and fresh[1]["state-fresh"] == 1.0
    assert all(torch.equal(damaged[2][k], fresh[2][k]) for k in fresh[2])
    for rows in (torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64), state[LEDGER_STATE].float()):
        with pytest.raises(ValueError, match="privacy-ledger"):
            client.train(arrays, config, {**state, LEDGER_STATE: rows})


def _context(cfg, node, partition, run_id, state_dir):
    return Context(
        run_id=run_id,
        node_id=node,
        node_config={"partition-id": partition, "num-partitions": cfg.num_clients, "state-dir": str(state_dir)},
        state=RecordDict(),
        run_config=cfg.to_flwr(),
    )


def _flower_rounds(strategy, contexts, rounds, lose_state_of=None):
    nodes = sorted(contexts)
    arrays = strategy.initial_arrays()
    for server_round in rounds:
        if lose_state_of is not None and server_round == lose_state_of[1]:
            node = lose_state_of[0]
            assert contexts[node].state.array_records, "the node to restart never trained: nothing to lose"
            contexts[node] = Context(run_id=contexts[node].run_id, node_id=node, node_config=contexts[node].node_config,
                                     state=RecordDict(), run_config=contexts[node].run_config)  # the SuperNode restarted
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid(nodes)))
        replies = [client_train(m, contexts[m.metadata.dst_node_id]) for m in messages]
        arrays, _ = strategy.aggregate_train(server_round, replies)
        strategy.evaluate(server_round, arrays)  # as Flower's loop does after each round
    return strategy.core


EF_CFG = dict(strategy="alpha-normec", noise_multiplier=0.7, server_lr=0.3, num_server_rounds=6, clients_per_round=2)


def test_a_restarted_supernode_resumes_its_state_from_its_disk(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(**EF_CFG)
    contexts = {101 + i: _context(cfg, 101 + i, i, 1, tmp_path / f"node-{i}") for i in range(4)}
    core = _flower_rounds(FlDpStrategy(ServerCore(cfg)), contexts, range(1, 7), lose_state_of=(102, 4))
    whole = InProcessFederation(cfg)
    whole.run()
    assert torch.allclose(core.x, whole.server.x, atol=1e-6)
    assert sorted(core.ledger.epsilons().values()) == pytest.approx(sorted(whole.server.ledger.epsilons().values()))


def test_a_server_resumed_through_flower_equals_the_uninterrupted_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(**EF_CFG, checkpoint_every=2, results_dir=str(tmp_path / "server"))
    dirs = [tmp_path / f"node-{i}" for i in range(4)]
    first = {101 + i: _context(cfg, 101 + i, i, 1, dirs[i]) for i in range(4)}
    _flower_rounds(FlDpStrategy(ServerCore(cfg)), first, range(1, 4))  # crashes after round 3
    resumed_cfg = cfg.replace(resume=True)
    core = ServerCore(resumed_cfg)
    core.resume()
    assert core.completed_rounds == 2
    # a new Flower run: the SuperNodes' contexts are empty, their disks are not
    second = {101 + i: _context(resumed_cfg, 101 + i, i, 2, dirs[i]) for i in range(4)}
    _flower_rounds(FlDpStrategy(core, first_round=3), second, range(1, 5))
    whole = InProcessFederation(cfg.replace(results_dir=str(tmp_path / "whole")))
    whole.run()
    assert torch.allclose(core.x, whole.server.x, atol=1e-6)
    # replayed round 3 is charged twice, on the server and in the client's own ledger
    for client, eps in whole.server.ledger.epsilons().items():
        assert core.ledger.epsilon(str(101 + int(client.split("-")[1]))) >= eps - 1e-9


def test_client_state_store_picks_the_state_the_server_resumes_from(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(checkpoint_every=2)
    store = ClientStateStore(tmp_path, cfg, 0)
    ledger = lambda n: torch.full((1, 3), float(n), dtype=torch.float64)  # noqa: E731
    s1, s3 = {"g": torch.ones(2), LEDGER_STATE: ledger(1)}, {"g": torch.full((2,), 3.0), LEDGER_STATE: ledger(3)}
    store.save(run_id=7, server_round=1, before={}, after=s1)
    store.save(run_id=7, server_round=3, before=s1, after=s3)  # s1 is the state as of checkpoint round 2
    assert torch.equal(store.restore(run_id=7, resumed_from=0)["g"], s3["g"])  # the SuperNode restarted
    assert store.restore(run_id=8, resumed_from=0) == {}  # a fresh run
    as_of_2 = store.restore(run_id=8, resumed_from=2)
    assert torch.equal(as_of_2["g"], s1["g"])
    assert torch.equal(as_of_2[LEDGER_STATE], s3[LEDGER_STATE])  # the ledger never goes back
    assert torch.equal(store.restore(run_id=8, resumed_from=4)["g"], s3["g"])
    assert set(store.restore(run_id=8, resumed_from=1)) == {LEDGER_STATE}  # no copy as of round 1: empty state
    store.path.write_bytes(b"\x00garbage")
    assert store.restore(run_id=7, resumed_from=0) == {}
    assert ClientStateStore(tmp_path, cfg.replace(seed=1), 0).restore(run_id=7, resumed_from=0) == {}


def _mean_client_state(contexts, num_clients):
    from clients.client_app import STATE_KEY

    total = 0
    for context in contexts.values():
        if STATE_KEY in context.state.array_records:
            total = total + torch.from_numpy(context.state.array_records[STATE_KEY]["g"].numpy().copy())
    return total / num_clients


@pytest.mark.parametrize("strategy, extra", [
    ("ef21", dict(compress_k=3, server_lr=0.3)),
    ("alpha-normec", dict(server_lr=0.3)),
    ("alpha-normec", dict(server_lr=0.3, privacy_model="central", noise_multiplier=0.5)),
])
def test_a_client_that_lost_its_state_is_taken_out_of_the_servers_state(tiny_cfg, tmp_path, strategy, extra):
    """No disk: the restarted client starts from g_i = 0, and G must stay the mean of the g_i."""
    cfg = tiny_cfg.replace(strategy=strategy, num_server_rounds=6, clients_per_round=3, **extra)
    contexts = {101 + i: _context(cfg, 101 + i, i, 1, "") for i in range(4)}
    core = _flower_rounds(FlDpStrategy(ServerCore(cfg)), contexts, range(1, 7), lose_state_of=(102, 3))
    mean_g = _mean_client_state(contexts, cfg.num_clients)
    if cfg.privacy_model == "central":
        # G also carries the server's noise: what is left once the noise is taken out is mean g_i
        assert core.client_shares is not None
        assert torch.allclose(sum(core.client_shares.values()) / cfg.num_clients, mean_g, atol=1e-5)
    else:
        assert torch.allclose(core.state["G"], mean_g, atol=1e-5)


def test_without_shares_the_server_state_drifts_from_the_clients(tiny_cfg):
    """The check above can fail: the same restart with the share never taken out leaves G off."""
    cfg = tiny_cfg.replace(strategy="ef21", compress_k=3, server_lr=0.3, num_server_rounds=6, clients_per_round=3)
    contexts = {101 + i: _context(cfg, 101 + i, i, 1, "") for i in range(4)}
    core = ServerCore(cfg)
    core.client_shares = None
    _flower_rounds(FlDpStrategy(core), contexts, range(1, 7), lose_state_of=(102, 3))
    assert not torch.allclose(core.state["G"], _mean_client_state(contexts, cfg.num_clients), atol=1e-3)


def test_a_state_fresh_flag_other_than_one_is_rejected_and_repeating_it_cannot_pile_up(tiny_cfg):
    cfg = tiny_cfg.replace(strategy="ef21", compress_k=3, server_lr=0.3)
    server = ServerCore(cfg)
    cohort = server.sample([f"client-{i}" for i in range(4)])
    replies = _honest_replies(cfg, server, cohort, 1)
    replies[0] = Reply(replies[0].client_id, replies[0].arrays, {**replies[0].metrics, "state-fresh": 0.5})
    row = server.aggregate(1, replies)
    assert row["accepted"] == 3 and "state-fresh is 1 when sent" in row["rejections"]
    # a client that says "fresh" every round replaces its share each time: it never weighs more than one message
    liar = cohort[1]
    for server_round in (2, 3):
        cohort = server.sample([f"client-{i}" for i in range(4)])
        replies = _honest_replies(cfg, server, cohort, server_round)  # every client starts from {}: all "fresh"
        server.aggregate(server_round, replies)
    last = dict(zip(cohort, replies))[liar]
    from fl_dp.wire import decode

    assert torch.allclose(server.client_shares[str(liar)], decode(last.arrays, server.dim, server.algorithm.wire_layouts))
    assert torch.allclose(server.state["G"], sum(server.client_shares.values()) / cfg.num_clients, atol=1e-6)


def test_after_a_resume_a_client_under_a_new_id_is_never_charged_less_than_before(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(strategy="alpha-normec", noise_multiplier=1.0, num_server_rounds=4, checkpoint_every=2,
                           clients_per_round=2, results_dir=str(tmp_path))
    first = InProcessFederation(cfg)
    first.run(stop_after=2)
    worst = max(first.server.ledger.epsilons().values())
    server = ServerCore(cfg.replace(resume=True))
    server.resume()
    cohort = server.sample(["node-9", "node-10"])  # the same people behind new node ids
    honest = _honest_replies(cfg, server, ["client-0", "client-1"], 3)
    server.aggregate(3, [Reply(node, reply.arrays, reply.metrics) for node, reply in zip(cohort, honest)])
    for client in cohort:
        assert server.ledger.epsilon(client) > worst


# ---------------------------------------------------------------- one server per run

_HOLD_THE_RUN = """
import json, sys
from fl_dp import checkpoint
from fl_dp.checkpoint import RunFiles
from fl_dp.config import ConfigError, RunConfig
checkpoint.RUN_LOCK_WAIT_SECONDS = 0.0  # refuse at once
try:
    held = RunFiles(RunConfig.from_flwr(json.loads(sys.argv[1])))
except ConfigError as err:
    print(err, flush=True)
    sys.exit(1)
print("holding", flush=True)
sys.stdin.read()
"""


def _other_server(cfg):
    """Another process taking ``cfg``'s run files, holding them until its stdin closes; and the
    first line it printed ("holding", or why it could not)."""
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_RUN, json.dumps(cfg.to_flwr())],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1],
    )
    return other, other.stdout.readline().strip()


def test_a_second_server_of_a_running_run_is_refused_naming_run_name_until_the_first_ends(tiny_cfg, tmp_path, monkeypatch):
    """Two servers of one run would overwrite each other's ledger journal: a resumed run would not
    be charged for the releases of the other."""
    monkeypatch.setattr(checkpoint, "RUN_LOCK_WAIT_SECONDS", 0.3)
    cfg = tiny_cfg.replace(results_dir=str(tmp_path), checkpoint_every=1)
    holder, said = _other_server(cfg)
    try:
        assert said == "holding"
        for again in (cfg, cfg.replace(resume=True), cfg.replace(resume=True, checkpoint_every=0)):  # the last reads only
            with pytest.raises(ConfigError, match=rf"in use by another server of this run \(process {holder.pid}\).*run-name"):
                InProcessFederation(again)
        assert not checkpoint_path(cfg).exists()
        InProcessFederation(cfg.replace(run_name="another")).run()  # another run's files are free
    finally:
        holder.communicate("", timeout=60)
    first = InProcessFederation(cfg)
    first.run(stop_after=1)
    second = InProcessFederation(cfg.replace(resume=True))  # this process's own hold: a restart in a test or notebook
    other, said = _other_server(cfg)
    other.communicate("", timeout=60)
    assert other.returncode == 1 and f"in use by another server of this run (process {os.getpid()})" in said
    second.run()
    assert second.server.completed_rounds == cfg.num_server_rounds
    del first
    other, said = _other_server(cfg)  # the run's last checkpoint let the files go
    other.communicate("", timeout=60)
    assert (other.returncode, said) == (0, "holding")
    reader = InProcessFederation(cfg.replace(resume=True, checkpoint_every=0, num_server_rounds=4))
    other, said = _other_server(cfg)
    other.communicate("", timeout=60)
    assert other.returncode == 1 and said.startswith(str(tmp_path))  # refused: a resumed run holds the files it read
    reader.run()
    other, said = _other_server(cfg)  # ... until its last round
    other.communicate("", timeout=60)
    assert (other.returncode, said) == (0, "holding")


@pytest.mark.parametrize("results_dir", ["/proc/fl-dp-cannot-be-made", "{file}/below-a-file", "{tmp}/csv-is-a-folder"])
def test_a_results_dir_the_server_cannot_write_is_refused_naming_it_before_round_one(tiny_cfg, tmp_path, results_dir, monkeypatch):
    from strategies.server_app import configure_logging

    for name in ("fl_dp", "flwr"):  # configure_logging sets them as a ServerApp's process needs; restored after
        monkeypatch.setattr(logging.getLogger(name), "propagate", logging.getLogger(name).propagate)

    (tmp_path / "file").write_text("")
    (tmp_path / "csv-is-a-folder" / f"{tiny_cfg.label}.csv").mkdir(parents=True)  # where the table goes after the last round
    results_dir = results_dir.replace("{tmp}", str(tmp_path))
    cfg = tiny_cfg.replace(results_dir=results_dir.format(file=tmp_path / "file"), checkpoint_every=1)
    with pytest.raises(ConfigError, match=r"^results-dir '.*': cannot write "):
        InProcessFederation(cfg)
    with pytest.raises(ConfigError, match=r"^results-dir '.*': cannot write "):
        configure_logging(cfg)  # where the Flower path writes first: its log


def test_a_second_server_waits_for_a_stopped_server_of_its_run_to_end(tiny_cfg, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(checkpoint, "RUN_LOCK_WAIT_SECONDS", 60.0)
    monkeypatch.setattr(checkpoint, "RUN_LOCK_POLL_SECONDS", 0.05)
    cfg = tiny_cfg.replace(results_dir=str(tmp_path), checkpoint_every=1)
    holder, said = _other_server(cfg)
    assert said == "holding"
    ending = threading.Timer(1.0, holder.stdin.close)  # the stopped run's process ends a second later
    ending.start()
    with caplog.at_level(logging.WARNING, logger="fl_dp"):
        InProcessFederation(cfg).run()
    holder.wait(timeout=60)
    assert f"held by process {holder.pid}, another server of this run: waiting up to 60 s" in caplog.text
