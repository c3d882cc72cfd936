"""Distributed DP: Skellam shares on the integer ring, summed by secure aggregation (Flower's SecAgg+
or its simulation in the in-process loop)."""

import copy
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from clients.client_app import app as client_app
from fl_dp.config import ConfigError, RunConfig
from fl_dp.distributed import DistributedSkellam, hadamard, mechanism_for, padded_dim, ring_sum, rotation_signs
from fl_dp.inprocess import InProcessFederation, simulated_secure_sum
from fl_dp.wire import Reply
from fl_dp.server import ServerCore
from fl_dp.central import CentralGaussianSum, project_to_ball
from benchmarks.secagg_dropouts import secure_rounds
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import Key


pytestmark = pytest.mark.usefixtures("flower_task")


def _mechanism(noise=0.0, dim=1000, survivors=0.4, cohort=10, bits=20):
    return DistributedSkellam(bound=1.0, noise_multiplier=noise, dim=dim, survivor_fraction=survivors, max_cohort=cohort, bits=bits)


def test_hadamard_is_orthonormal_and_its_own_inverse():
    v = torch.randn(256, dtype=torch.float64)
    assert torch.allclose(hadamard(hadamard(v)), v, atol=1e-12)
    assert float(torch.linalg.vector_norm(hadamard(v))) == pytest.approx(float(torch.linalg.vector_norm(v)), rel=1e-12)
    assert padded_dim(1000) == 1024 and padded_dim(1024) == 1024 and padded_dim(1) == 1


def test_noiseless_shares_sum_to_the_central_sum_up_to_the_stated_rounding_error():
    mechanism = _mechanism()
    rng = np.random.default_rng(0)
    messages = [torch.randn(1000) * s for s in (0.1, 0.5, 2.0, 5.0, 0.01, 1.0)]
    signs = rotation_signs(0, 3, mechanism.padded)
    total = ring_sum([mechanism.encode(m, signs, rng, len(messages)) for m in messages], mechanism.modulus)
    central = CentralGaussianSum(bound=1.0, noise_multiplier=0.0)(messages, 1000, torch.Generator())
    error = float(torch.linalg.vector_norm(mechanism.decode(total, signs) - central))
    # each of the n shares is off by < 1 per rotated coordinate: ||error|| <= n sqrt(d') / scale
    assert error <= len(messages) * math.sqrt(mechanism.padded) / mechanism.scale
    assert error > 0  # rounding happened (the bound is not vacuous)


def test_noise_of_the_surviving_shares_has_the_calibrated_variance():
    mechanism = _mechanism(noise=1.5, survivors=0.5)
    rng = np.random.default_rng(1)
    signs = rotation_signs(0, 1, mechanism.padded)
    zero = torch.zeros(1000)
    total = ring_sum([mechanism.encode(zero, signs, rng, 10) for _ in range(mechanism.min_survivors(10))], mechanism.modulus)
    noise = mechanism.decode(total, signs)
    expected_std = mechanism.noise_multiplier * mechanism.l2 / mechanism.scale  # s n shares: exactly (z D2)^2
    assert float(noise.std()) == pytest.approx(expected_std, rel=0.08)


@pytest.mark.parametrize("cohort, survivors", [(4, 4), (10, 10), (10, 6), (7, 5)])
def test_the_released_noise_is_the_same_whatever_the_cohort_and_the_dropouts(cohort, survivors):
    # a client's presence must not change the sum's variance: an energy test would reveal it
    mechanism = _mechanism(noise=1.5, survivors=0.5)
    rng = np.random.default_rng(cohort * 100 + survivors)
    signs = rotation_signs(0, 1, mechanism.padded)
    shares = [mechanism.encode(torch.zeros(1000), signs, rng, cohort) for _ in range(survivors)]
    total = np.mod(ring_sum(shares, mechanism.modulus) + mechanism.top_up(cohort, survivors, rng), mechanism.modulus)
    noise = mechanism.decode(total, signs)
    assert float(noise.std()) == pytest.approx(mechanism.effective_noise_multiplier * mechanism.bound, rel=0.08)


def test_scale_keeps_the_wrap_probability_below_its_bound_and_refuses_too_few_bits():
    mechanism = _mechanism(noise=1.0, cohort=50)
    assert mechanism.wrap_bound(50) <= 1e-9 * 1.01
    assert mechanism.wrap_bound(5) < mechanism.wrap_bound(50)
    with pytest.raises(ValueError, match="bits"):
        _mechanism(noise=5.0, cohort=50, bits=8, dim=100000)


def test_rotation_signs_are_shared_by_seed_and_round():
    assert torch.equal(rotation_signs(3, 7, 64), rotation_signs(3, 7, 64))
    assert not torch.equal(rotation_signs(3, 7, 64), rotation_signs(3, 8, 64))


def _cfg(tiny_cfg, **overrides):
    base = dict(strategy="alpha-normec", privacy_model="distributed", num_clients=8, clients_per_round=6, num_server_rounds=3, secagg_survivors=0.5)
    return tiny_cfg.replace(**{**base, **overrides})


def test_distributed_ledger_charges_the_population_at_q_with_skellam_releases(tiny_cfg):
    cfg = _cfg(tiny_cfg, target_epsilon=4.0)
    federation = InProcessFederation(cfg)
    history = federation.run()
    assert history["epsilon-max"].iloc[-1] <= 4.0 + 1e-6
    assert history["epsilon-max"].iloc[-1] > 3.0  # calibrated to the target, not far below it
    releases = federation.server.ledger.releases(next(iter(federation.clients)))
    assert releases and all(r.is_skellam and r.sample_rate == pytest.approx(6 / 8) for r in releases)


def test_fewer_survivors_than_the_noise_needs_skips_the_round_and_keeps_the_model(tiny_cfg):
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_survivors=1.0, num_clients=6, clients_per_round=6)
    server = ServerCore(cfg)
    x0 = server.x.clone()
    cohort = server.sample([str(i) for i in range(6)])
    mechanism = server.distributed
    rng = np.random.default_rng(0)
    signs = rotation_signs(cfg.seed, 1, mechanism.padded)
    shares = [mechanism.encode(torch.zeros(server.dim), signs, rng, len(cohort)) for _ in cohort[:-1]]
    row = server.aggregate_secure(1, ring_sum(shares, mechanism.modulus), cohort[:-1])
    assert "shares survived" in row["skipped"] and torch.equal(server.x, x0)
    assert server.ledger.summary()[0] > 0  # the population is charged all the same


def test_a_secure_sum_naming_a_stranger_or_a_malformed_sum_is_discarded(tiny_cfg):
    cfg = _cfg(tiny_cfg, target_epsilon=4.0)
    server = ServerCore(cfg)
    cohort = server.sample([str(i) for i in range(8)])
    row = server.aggregate_secure(1, np.zeros(server.distributed.padded, np.int64), list(cohort) + ["intruder"])
    assert "not addressed" in row["skipped"]
    cohort = server.sample([str(i) for i in range(8)])
    row = server.aggregate_secure(2, np.full(3, -1, np.int64), list(cohort))
    assert "ring" in row["skipped"] or "shares survived" in row["skipped"]


def test_one_hostile_share_moves_the_model_at_most_by_the_honest_sum_bound(tiny_cfg):
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_survivors=0.5)
    server = ServerCore(cfg)
    cohort = server.sample([str(i) for i in range(8)])
    mechanism = server.distributed
    huge = np.full(mechanism.padded, mechanism.modulus // 2 - 1, np.int64)  # the largest a share can push
    x0 = server.x.clone()
    server.aggregate_secure(1, huge, cohort)
    step = float(torch.linalg.vector_norm(server.x - x0))
    limit = cfg.server_lr * mechanism.sum_norm_limit(len(cohort)) / cfg.clients_per_round
    assert step <= limit * 1.01


def test_distributed_config_errors_name_the_key(tiny_cfg):
    with pytest.raises(ConfigError, match="secagg-bits"):
        _cfg(tiny_cfg, secagg_bits=40)
    with pytest.raises(ConfigError, match="secagg-survivors"):
        _cfg(tiny_cfg, secagg_survivors=0.0)
    with pytest.raises(ConfigError, match="privacy-model"):
        _cfg(tiny_cfg, strategy="ef21")
    for clip in (1e300, 1e150):  # its square overflows a float, or the shares' range
        with pytest.raises(ConfigError, match="^clip|secagg-bits"):
            ServerCore(_cfg(tiny_cfg, strategy="clip21", clip=clip, target_epsilon=4.0))


# ---------------------------------------------------------------- Flower's SecAgg+


class InProcessGrid:
    """A Grid that delivers each message to the ClientApp (with its mods) of its node, in process,
    and records every reply that reaches the server."""

    STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")

    def __init__(self, contexts, drop=(), tamper=None, drop_from=None):
        self.contexts, self.drop, self.seen, self.tamper = contexts, set(drop), [], tamper or {}
        # node -> the SecAgg+ stage from which it no longer answers (every round, or (stage, round))
        self.drop_from = drop_from or {}

    def get_node_ids(self):
        return sorted(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in self.drop:
                continue
            stage = message.content.config_records.get("secaggplus_configs", {}).get("stage")
            leave = self.drop_from.get(node)
            leave_stage, leave_round = leave if isinstance(leave, tuple) else (leave, None)
            in_round = leave_round is None or message.metadata.group_id == str(leave_round)
            if leave is not None and in_round and self.STAGES.index(stage) >= self.STAGES.index(leave_stage):
                continue
            # a real Grid serialises each message: a node never shares the server's RecordDict
            reply = client_app(copy.deepcopy(message), self.contexts[node])
            self.seen.append(reply)
            replies.append(reply)
        stage = messages[0].content.config_records.get("secaggplus_configs", {}).get("stage") if messages else None
        for reply in replies:  # a hostile node may read the others' replies first
            if reply.metadata.src_node_id in self.tamper and not reply.has_error():
                self.tamper[reply.metadata.src_node_id](stage, reply, replies)
        return replies


def _flower_secure_run(cfg, rounds, drop=(), tamper=None, drop_from=None):
    return secure_rounds(cfg, rounds, lambda contexts: InProcessGrid(contexts, drop, tamper, drop_from))


def test_flower_secagg_path_equals_the_in_process_loop_and_never_shows_the_server_a_message(tiny_cfg):
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=3)
    core, grid = _flower_secure_run(cfg, 2)
    federation = InProcessFederation(cfg)
    federation.run(stop_after=2)
    assert torch.allclose(core.x, federation.server.x, atol=1e-6)
    assert list(core.history()["accepted"]) == list(federation.server.history()["accepted"])
    # what the server received: key material and masked vectors, never an 'arrays' record nor fitres parameters
    for reply in grid.seen:
        assert "arrays" not in reply.content.array_records
        for record in reply.content.array_records.values():
            assert len(record) == 0
    # the masked vectors the server sums are uniform mod 2^32, not shares in [0, M)
    masked = [
        bytes_to_ndarray(b)
        for r in grid.seen
        for b in r.content.config_records["secaggplus_configs"].get(Key.MASKED_PARAMETERS, [])
    ]
    vectors = [v for v in masked if v.size == core.distributed.padded]  # (the other array is the weight)
    assert len(vectors) == sum(core.history()["sampled"])
    assert all(int(vector.max()) >= core.distributed.modulus for vector in vectors)


def test_flower_secagg_survives_a_dropped_client_and_skips_below_the_threshold(tiny_cfg):
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=5, secagg_survivors=0.5)
    core, _ = _flower_secure_run(cfg, 1, drop={101})
    assert core.history()["skipped"].iloc[0] == ""
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=5, secagg_survivors=1.0, num_clients=6, clients_per_round=6)
    x0 = ServerCore(cfg).x.clone()
    core, _ = _flower_secure_run(cfg, 1, drop={101})
    assert core.history()["skipped"].iloc[0] != ""
    assert torch.equal(core.x, x0)


def _configs(reply):
    return reply.content.config_records["secaggplus_configs"]


def _set(key, value):
    def change(reply):
        _configs(reply)[key] = value(_configs(reply)) if callable(value) else value

    return change


def _masked_with(arrays):
    from flwr.common import ndarray_to_bytes

    return _set(Key.MASKED_PARAMETERS, lambda c: [ndarray_to_bytes(a) for a in arrays(c)])


def _masked(configs):
    return [bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]]


HOSTILE_STAGE_REPLIES = {
    "setup: a key missing": ("setup", lambda r: _configs(r).pop(Key.PUBLIC_KEY_2)),
    "setup: a key that is not a key": ("setup", _set(Key.PUBLIC_KEY_1, b"-----BEGIN PUBLIC KEY-----junk")),
    "setup: both keys the same": ("setup", _set(Key.PUBLIC_KEY_2, lambda c: c[Key.PUBLIC_KEY_1])),
    "setup: no configs record": ("setup", lambda r: r.content.config_records.pop("secaggplus_configs")),
    "share keys: a stranger as destination": ("share_keys", _set(Key.DESTINATION_LIST, lambda c: [*c[Key.DESTINATION_LIST][:-1], 999])),
    "share keys: a ciphertext missing": ("share_keys", _set(Key.CIPHERTEXT_LIST, lambda c: c[Key.CIPHERTEXT_LIST][:-1])),
    "share keys: one destination twice": ("share_keys", _set(Key.DESTINATION_LIST, lambda c: [c[Key.DESTINATION_LIST][0]] * len(c[Key.DESTINATION_LIST]))),
    "masked vector: truncated": ("collect_masked_vectors", _masked_with(lambda c: [_masked(c)[0], _masked(c)[1][:-1]])),
    "masked vector: the weight left out": ("collect_masked_vectors", _masked_with(lambda c: _masked(c)[1:])),
    "masked vector: beyond the modulus": ("collect_masked_vectors", _masked_with(lambda c: [_masked(c)[0], _masked(c)[1] + 2**33])),
    "masked vector: floats": ("collect_masked_vectors", _masked_with(lambda c: [_masked(c)[0], _masked(c)[1].astype(np.float64)])),
    "masked vector: bytes that do not decode": ("collect_masked_vectors", _set(Key.MASKED_PARAMETERS, [b"junk", b"junk"])),
    "unmask: a share for a stranger": ("unmask", _set(Key.NODE_ID_LIST, lambda c: [*c[Key.NODE_ID_LIST][:-1], 999])),
    "unmask: a share too short": ("unmask", _set(Key.SHARE_LIST, lambda c: [c[Key.SHARE_LIST][0][:7], *c[Key.SHARE_LIST][1:]])),
    "unmask: ids not integers": ("unmask", _set(Key.NODE_ID_LIST, lambda c: [str(n) for n in c[Key.NODE_ID_LIST]])),
    "unmask: one share sent for two secrets": ("unmask", _set(Key.SHARE_LIST, lambda c: [c[Key.SHARE_LIST][0]] * len(c[Key.SHARE_LIST]))),
}


def test_honest_secagg_replies_are_never_refused(tiny_cfg):
    core, _ = _flower_secure_run(_cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=5), 2)
    assert list(core.history()["rejected"]) == [0, 0] and list(core.history()["skipped"]) == ["", ""]


@pytest.mark.parametrize("case", sorted(HOSTILE_STAGE_REPLIES))
def test_a_malformed_secagg_stage_reply_drops_its_sender_not_the_round(tiny_cfg, case):
    stage, tamper = HOSTILE_STAGE_REPLIES[case]
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=5, num_clients=6, clients_per_round=6)
    x0 = ServerCore(cfg).x.clone()
    core, _ = _flower_secure_run(cfg, 1, tamper={101: lambda s, r, _: tamper(r) if s == stage else None})
    row = core.history().iloc[0]
    assert row["skipped"] == "" and "101: SecAgg+ reply refused" in row["rejections"], case
    assert torch.isfinite(core.x).all() and not torch.equal(core.x, x0)
    if stage == "setup":  # refused before it took part: the round is the one it never answered
        dropped, _ = _flower_secure_run(cfg, 1, drop={101})
        assert torch.equal(core.x, dropped.x)


LEAVING = {f"103 at {stage}": {103: stage} for stage in InProcessGrid.STAGES} | {
    "104 at share_keys, 105 at collect": {104: "share_keys", 105: "collect_masked_vectors"},
    "104 at setup, 105 at unmask": {104: "setup", 105: "unmask"},
}  # two at most: of any secret's 5 holders, 3 (the threshold) are then left whatever SecAgg+'s random ring


@pytest.mark.parametrize("case", sorted(LEAVING))
def test_secagg_unmasks_exactly_the_surviving_shares_whichever_stage_clients_leave_at(tiny_cfg, monkeypatch, case):
    """Flower's own workflow loses the round when a client leaves before sharing its keys (its
    neighbours are asked for key shares they never got); the bridge's workflow does not."""
    shares, outcomes = {}, []
    encode, aggregate_secure = DistributedSkellam.encode, ServerCore.aggregate_secure

    def recording_encode(self, message, signs, rng, cohort):
        share = encode(self, message, signs, rng, cohort)
        shares[len(shares)] = share
        return share

    def recording_aggregate(self, server_round, total, contributors, failures=()):
        outcomes.append((total, list(contributors)))
        return aggregate_secure(self, server_round, total, contributors, failures)

    monkeypatch.setattr(DistributedSkellam, "encode", recording_encode)
    monkeypatch.setattr(ServerCore, "aggregate_secure", recording_aggregate)
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=5, num_clients=7, clients_per_round=7)
    core, _ = _flower_secure_run(cfg, 1, drop_from=LEAVING[case])
    (total, contributors), = outcomes
    # a client that left at unmask is in the sum (it sent its masked share); only its key shares are missing
    in_sum = [str(101 + i) for i in range(7) if LEAVING[case].get(101 + i, "unmask") == "unmask"]
    assert sorted(contributors) == in_sum
    assert len(shares) == len(contributors)  # a client that left before stage 2 never trained
    assert np.array_equal(total, np.mod(sum(s.astype(np.int64) for s in shares.values()), core.distributed.modulus))
    assert core.history()["skipped"].iloc[0] == ""


@pytest.mark.parametrize("stage", ["setup", "share_keys", "collect_masked_vectors"])
def test_a_client_leaving_secagg_in_one_round_gives_the_in_process_trajectory(tiny_cfg, monkeypatch, stage):
    """Whichever stage before its masked share a client leaves at, Flower's path (with the bridge's
    workflow) moves the model as the in-process loop does when that client fails the round."""
    from fl_dp.client import ClientCore
    from fl_dp.wire import MalformedMessage

    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=5, num_clients=6, clients_per_round=6)
    flower, _ = _flower_secure_run(cfg, 3, drop_from={102: (stage, 2)})
    honest_train = ClientCore.train

    def train(self, arrays, config, state):
        if self.partition_id == 1 and int(config["server-round"]) == 2:
            raise MalformedMessage("left the round")
        return honest_train(self, arrays, config, state)

    monkeypatch.setattr(ClientCore, "train", train)
    federation = InProcessFederation(cfg)
    federation.run()
    assert torch.allclose(flower.x, federation.server.x, atol=1e-6)
    assert list(flower.history()["accepted"]) == list(federation.server.history()["accepted"]) == [6, 5, 6]


def _copy_a_public_key(stage, reply, replies):
    if stage == "setup":
        other = next(r for r in replies if r is not reply and not r.has_error())
        _configs(reply)[Key.PUBLIC_KEY_1] = _configs(other)[Key.PUBLIC_KEY_1]


def _reuse_an_index(stage, reply, replies):
    if stage != "unmask":
        return
    mine = _configs(reply)
    for other in (r for r in replies if r is not reply and not r.has_error()):
        theirs = dict(zip(_configs(other)[Key.NODE_ID_LIST], _configs(other)[Key.SHARE_LIST]))
        for i, owner in enumerate(mine[Key.NODE_ID_LIST]):
            if owner in theirs:
                shares = list(mine[Key.SHARE_LIST])
                shares[i] = theirs[owner][:4] + shares[i][4:]
                mine[Key.SHARE_LIST] = shares
                return


@pytest.mark.parametrize("tamper, refused", [(_copy_a_public_key, "a public key another node sent too"),
                                             (_reuse_an_index, "a key share with the index of another holder's share")])
def test_clashing_secagg_replies_refuse_both_sides_and_the_round_goes_on(tiny_cfg, tamper, refused):
    """Each reply alone looks honest; together they would make every neighbour of both refuse the
    keys, or the secret impossible to combine. The server cannot tell who copied: both are dropped."""
    cfg = _cfg(tiny_cfg, target_epsilon=4.0, secagg_num_shares=5, num_clients=7, clients_per_round=7)
    core, _ = _flower_secure_run(cfg, 1, tamper={101: tamper})
    row = core.history().iloc[0]
    assert row["skipped"] == "" and row["rejected"] == 2 and "101: SecAgg+ reply refused: " + refused in row["rejections"]
    assert torch.isfinite(core.x).all()


def test_a_client_refuses_a_cohort_size_its_run_cannot_have(tiny_cfg):
    from fl_dp.wire import COHORT_SIZE, MalformedMessage

    cfg = _cfg(tiny_cfg, target_epsilon=4.0)
    federation = InProcessFederation(cfg)
    cohort = federation.server.sample(list(federation.clients))
    arrays, config = federation.server.broadcast(1)
    assert config[COHORT_SIZE] == len(cohort)
    client = federation.clients[cohort[0]]
    client.train(arrays, config, {})  # the honest request is answered
    limit = mechanism_for(cfg).max_cohort
    for bad in (0, limit + 1, None, 2.5, True):
        with pytest.raises(MalformedMessage, match="cohort"):
            client.train(arrays, {**config, COHORT_SIZE: bad}, {})


@pytest.mark.parametrize("active, dead", [([102, 103], [103]), ([102], [101])])
def test_a_client_refuses_an_unmask_request_that_would_open_one_node_s_masks(active, dead):
    """Listed both active and dropped, a node's self-mask and pairwise key would both be revealed
    (and node 101 is not dropped while it answers): the client answers nothing."""
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    from strategies.secagg_bridge import secure_aggregation_mod

    configs = ConfigRecord({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active, Key.DEAD_NODE_ID_LIST: dead})
    message = Message(RecordDict({"secaggplus_configs": configs}), dst_node_id=101, message_type="train")
    context = Context(run_id=1, node_id=101, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="both active and dropped"):
        secure_aggregation_mod(message, context, lambda m, c: pytest.fail("the app was called"))


def _setup_configs(**changes):
    from flwr.common.secure_aggregation.secaggplus_constants import Stage

    from fl_dp.distributed import SECAGG_MODULUS

    honest = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 10, Key.SHARE_NUMBER: 7, Key.THRESHOLD: 4,
              Key.CLIPPING_RANGE: float(2**19), Key.TARGET_RANGE: 2**20, Key.MOD_RANGE: SECAGG_MODULUS, Key.MAX_WEIGHT: 1.0}
    return ConfigRecord({**honest, **changes})


@pytest.mark.parametrize(
    "changes, refused",
    [
        ({}, None),
        ({Key.SHARE_NUMBER: 2, Key.THRESHOLD: 2, Key.SAMPLE_NUMBER: 2}, None),
        ({Key.CLIPPING_RANGE: 8.0}, "ring values exact"),
        ({Key.MAX_WEIGHT: 1000.0}, "ring values exact"),
        ({Key.THRESHOLD: 3}, "not a majority"),  # 3 of 7 neighbours with the server could open a share
        ({Key.THRESHOLD: 1}, "not a majority"),
        ({Key.THRESHOLD: 8}, "not a majority"),
        ({Key.SHARE_NUMBER: 11, Key.THRESHOLD: 6}, "not a majority"),  # more shares than the cohort
        ({Key.SAMPLE_NUMBER: 10**6}, "not a cohort this run draws"),  # a million shares to compute
    ],
)
def test_a_client_refuses_a_secagg_setup_that_re_rounds_its_share_or_lowers_the_threshold(tiny_cfg, changes, refused):
    from strategies.secagg_bridge import secure_aggregation_mod

    cfg = _cfg(tiny_cfg, target_epsilon=4.0, num_clients=10, clients_per_round=10)
    message = Message(RecordDict({"secaggplus_configs": _setup_configs(**changes)}), dst_node_id=101, message_type="train")
    context = Context(run_id=1, node_id=101, node_config={"partition-id": 0, "num-partitions": 10}, state=RecordDict(),
                      run_config=cfg.to_flwr())
    if refused is None:
        reply = secure_aggregation_mod(message, context, lambda m, c: pytest.fail("setup never reaches the app"))
        assert Key.PUBLIC_KEY_1 in reply.content.config_records["secaggplus_configs"]
    else:
        with pytest.raises(ValueError, match=refused):
            secure_aggregation_mod(message, context, lambda m, c: pytest.fail("the app was called"))


def test_a_client_of_a_run_without_secure_aggregation_refuses_a_secagg_setup(tiny_cfg):
    from strategies.secagg_bridge import secure_aggregation_mod

    cfg = _cfg(tiny_cfg, privacy_model="central", target_epsilon=4.0, num_clients=10, clients_per_round=10, secagg_survivors=0.8)
    message = Message(RecordDict({"secaggplus_configs": _setup_configs()}), dst_node_id=101, message_type="train")
    context = Context(run_id=1, node_id=101, node_config={"partition-id": 0, "num-partitions": 10}, state=RecordDict(),
                      run_config=cfg.to_flwr())
    with pytest.raises(ConfigError, match="privacy-model 'central'"):
        secure_aggregation_mod(message, context, lambda m, c: pytest.fail("the app was called"))


@pytest.mark.parametrize("stage, listed", [
    ("share_keys", lambda n: {str(200 + i): [b"k1", b"k2"] for i in range(n)}),
    ("collect_masked_vectors", lambda n: {Key.CIPHERTEXT_LIST: [b"c"] * n, Key.SOURCE_LIST: list(range(n))}),
    ("unmask", lambda n: {Key.ACTIVE_NODE_ID_LIST: list(range(n)), Key.DEAD_NODE_ID_LIST: []}),
])
def test_a_client_refuses_a_stage_request_naming_more_nodes_than_its_shares(tiny_cfg, stage, listed):
    """Each named node costs the client a key agreement or a decryption: a server naming thousands
    would stall it. Its setup said 7 shares (itself and six neighbours)."""
    from strategies.secagg_bridge import secure_aggregation_mod

    cfg = _cfg(tiny_cfg, target_epsilon=4.0, num_clients=10, clients_per_round=10)
    context = Context(run_id=1, node_id=101, node_config={"partition-id": 0, "num-partitions": 10}, state=RecordDict(),
                      run_config=cfg.to_flwr())
    setup = Message(RecordDict({"secaggplus_configs": _setup_configs()}), dst_node_id=101, message_type="train")
    secure_aggregation_mod(setup, context, lambda m, c: pytest.fail("setup never reaches the app"))
    request = ConfigRecord({Key.STAGE: stage, **listed(5000)})
    message = Message(RecordDict({"secaggplus_configs": request}), dst_node_id=101, message_type="train")
    with pytest.raises(ValueError, match="names 5000 nodes to a client with 7 shares"):
        secure_aggregation_mod(message, context, lambda m, c: pytest.fail("the app was called"))
