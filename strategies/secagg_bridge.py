"""Flower's SecAgg+ under fl-dp's Message-API strategy (``privacy-model = "distributed"``).

In flwr 1.41 and 1.42, SecAgg+ exists only on the legacy path: ``SecAggPlusWorkflow`` drives a legacy
``Strategy`` (``configure_fit`` / ``aggregate_fit``) inside a ``LegacyContext``, and the client's
``secaggplus_mod`` reads and writes the legacy ``fitins.*`` / ``fitres.*`` records. This module is
the bridge, in one place:

- server: :class:`SecAggPlusGrid` wraps the run's Grid; a round's training messages go through the
  four SecAgg+ stages with a one-round legacy shim strategy, and the strategy receives only
  :class:`SecureOutcome` (the ring sum of the surviving shares and who contributed). The stages
  run on :class:`StageCheckingGrid` (a reply no honest client sends drops its sender) under
  :class:`DropoutTolerantSecAggPlus` (a client that leaves before sharing its keys does not lose
  the round, as it does in flwr 1.41 / 1.42's workflow);
- client: :func:`secure_aggregation_mod` passes SecAgg+ messages through ``secaggplus_mod`` and
  maps the layouts both ways (the app's own ``arrays`` / ``config`` in, the share out as
  ``fitres.parameters``); every other message goes to the app unchanged.

SecAgg+ quantizes floats into [0, quantization_range) and sums mod modulus_range; with
clipping_range = M / 2, quantization_range = M and weight 1 of 1, a share v in [0, M) sent as
v - M / 2 is quantized to v exactly, so the protocol computes the ring sum of fl-dp's shares
(:mod:`fl_dp.distributed`) and nothing is re-rounded. Remove this module once Flower offers SecAgg+
for the Message API (proposed upstream as flwr PR 4615, "Message API SecAgg+", not merged in 1.42):
the strategy would then call that workflow and the client register the mod directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, cast

import flwr
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.supercore.primitives.asymmetric import bytes_to_public_key, generate_key_pairs

from fl_dp.distributed import RING_KEY, SECAGG_MODULUS, DistributedSkellam
from fl_dp.wire import ARRAYS_KEY, CONFIG_KEY, client_text, to_array_record

log = logging.getLogger("fl_dp")

#: the flwr releases whose SecAgg+ internals this bridge was written and tested against
PINNED_FLWR = ("1.41", "1.42")
if not flwr.__version__.startswith(PINNED_FLWR):  # pragma: no cover - depends on the installed flwr
    raise ImportError(f"strategies.secagg_bridge is pinned to flwr {' / '.join(PINNED_FLWR)}, found {flwr.__version__}")


@dataclass
class SecureOutcome:
    """What one SecAgg+ round gives the server: the ring sum (None if the protocol halted), the
    node ids whose shares it holds, and the nodes that failed with their reason."""

    total: np.ndarray | None
    contributors: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)


def secagg_settings(mechanism: DistributedSkellam, cohort: int, num_shares: int) -> dict[str, Any]:
    """SecAggPlusWorkflow's arguments for a cohort: up to ``num_shares`` neighbours (odd), a majority
    of them to reconstruct, and the quantization that leaves fl-dp's ring values unchanged."""
    shares = min(num_shares, cohort)
    if shares < cohort and shares % 2 == 0:
        shares -= 1
    return dict(
        num_shares=1.0 if shares >= cohort or shares < 3 else shares,
        reconstruction_threshold=max(2, min(shares, cohort) // 2 + 1),
        max_weight=1.0,
        clipping_range=float(mechanism.modulus // 2),
        quantization_range=mechanism.modulus,
        modulus_range=SECAGG_MODULUS,
    )


class _RoundShim(LegacyStrategy):
    """A legacy strategy for one round: hands SecAgg+ the round's FitIns, keeps the unmasked result."""

    def __init__(self, proxies: list[ClientProxy], fitins: FitIns) -> None:
        self.proxies, self.fitins = proxies, fitins
        self.aggregate: np.ndarray | None = None
        self.contributors: list[str] = []

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[tuple[ClientProxy, FitIns]]:
        return [(proxy, self.fitins) for proxy in self.proxies]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Any]]:
        # every result carries the same unmasked aggregate: SecAgg+ writes it into each FitRes
        if results:
            (arrays,) = parameters_to_ndarrays(results[0][1].parameters)
            self.aggregate = np.asarray(arrays, dtype=np.float64)
            self.contributors = [str(proxy.node_id) for proxy, _ in results]
        return None, {}

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, except that a client who leaves before it has shared its keys
    (stage 0 or 1) is out of the round, not 'dead'.

    In flwr 1.41 / 1.42 such a client stays in ``sampled_node_ids`` and in its neighbours' lists,
    so the unmask stage asks the neighbours for key shares it never sent them (each raises
    KeyError), wants its secret key reconstructed from no shares, and would remove pairwise masks
    nobody added: one early dropout loses the round for everyone. After stages 0 and 1 this
    keeps only the clients that answered in ``sampled_node_ids`` and the neighbour sets (the
    upstream change is the same two assignments at the end of ``setup_stage`` and
    ``share_keys_stage``). Clients that leave later (stage 2) are unmasked as Flower does.
    """

    def setup_stage(self, grid: Any, context: Any, state: Any) -> bool:
        # both stages end with the threshold check, which _keep_answering makes again on the survivors
        super().setup_stage(grid, context, state)
        return self._keep_answering(state)

    def share_keys_stage(self, grid: Any, context: Any, state: Any) -> bool:
        super().share_keys_stage(grid, context, state)
        return self._keep_answering(state)

    def _keep_answering(self, state: Any) -> bool:
        if not state.nid_to_neighbours:
            return False  # setup halted before it drew the neighbours (fewer than 2 clients)
        answering = set(state.active_node_ids)
        left = set(state.sampled_node_ids) - answering
        if left:
            log.info("SecAgg+: %d client(s) left before sharing their keys, taken out of the round", len(left))
        state.sampled_node_ids = answering
        state.nid_to_neighbours = {
            nid: neighbours & answering for nid, neighbours in state.nid_to_neighbours.items() if nid in answering
        }
        return bool(answering) and self._check_threshold(state)


class SecAggPlusGrid:
    """The Grid the strategy runs on under ``distributed``: training messages go through SecAgg+,
    everything else (node ids, other messages) to the wrapped Grid."""

    #: the SecAgg+ server workflow (Flower's own, ``SecAggPlusWorkflow``, loses a round to a client
    #: that leaves before sharing its keys; benchmarks.secagg_dropouts compares the two)
    workflow: type[SecAggPlusWorkflow] = DropoutTolerantSecAggPlus

    def __init__(self, grid: Any, mechanism: DistributedSkellam, num_shares: int, timeout: float | None) -> None:
        self.grid, self.mechanism, self.num_shares, self.timeout = grid, mechanism, num_shares, timeout
        self.outcome: SecureOutcome | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN for m in messages):
            return list(self.grid.send_and_receive(messages, timeout=timeout))
        self.outcome = self.secure_round(messages)
        return []

    def take(self) -> SecureOutcome:
        """The last round's outcome (once); a round that never reached SecAgg+ has none."""
        outcome, self.outcome = self.outcome or SecureOutcome(None), None
        return outcome

    def secure_round(self, messages: list[Message]) -> SecureOutcome:
        """Run SecAgg+ for the round's training messages; the ring sum of the surviving shares."""
        content = messages[0].content
        config: dict[str, Any] = dict(content.config_records[CONFIG_KEY].items())
        x = content.array_records[ARRAYS_KEY]["x"].numpy()
        node_ids = [m.metadata.dst_node_id for m in messages]
        if len(node_ids) < 2:
            return SecureOutcome(None, [], [(str(n), "SecAgg+ needs at least 2 clients in a cohort") for n in node_ids])
        run_id = messages[0].metadata.run_id
        shim = _RoundShim([GridClientProxy(n, self.grid, run_id) for n in node_ids], FitIns(ndarrays_to_parameters([x]), config))
        context = LegacyContext(
            Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            config=ServerConfig(num_rounds=1),
            strategy=shim,
            client_manager=SimpleClientManager(),
        )
        context.state.config_records["config"] = ConfigRecord({"current_round": int(config["server-round"])})
        context.state.array_records["parameters"] = ArrayRecord()
        workflow = self.workflow(**secagg_settings(self.mechanism, len(node_ids), self.num_shares), timeout=self.timeout)
        checked = StageCheckingGrid(self.grid, self.mechanism.padded)
        try:
            workflow(cast(Any, checked), context)  # a Grid by duck typing, as SecAggPlusGrid is
        except Exception as err:  # noqa: BLE001 - whatever a reply the checks let through makes SecAgg+ raise must not end the run
            log.error("SecAgg+ failed: %s: %s", type(err).__name__, err)
            return SecureOutcome(None, [], [*checked.rejected, ("secagg", f"{type(err).__name__}: {err}"[:300])])
        if shim.aggregate is None:
            return SecureOutcome(None, [], [*checked.rejected, ("secagg", "SecAgg+ halted (too few clients answered a stage)")])
        total = ring_sum_of_mean(shim.aggregate, len(shim.contributors), self.mechanism)
        return SecureOutcome(total, shim.contributors, checked.rejected)


class StageCheckingGrid:
    """The Grid SecAggPlusWorkflow runs on: a stage reply that is not what an honest client of that
    stage sends (a missing record, a wrong type or length, a key that does not load, a share for a
    node it was not asked about, a masked vector of the wrong shape) becomes an error reply, so the
    workflow drops that client as it drops one that went away, instead of raising on it and losing
    the round for everyone.

    Replies that each pass but clash (see :func:`cross_reply_problems`) are refused on both sides.
    What the server cannot see stays SecAgg+'s own limit: a ciphertext that does not decrypt makes
    the neighbour that receives it fail; a forged key share of the right form fails to combine (the
    round is lost) or unmasks a wrong sum, as does a masked vector of the right form, and
    :meth:`fl_dp.server.ServerCore.aggregate_secure` bounds a wrong sum like any other.
    """

    def __init__(self, grid: Any, padded: int) -> None:
        self.grid, self.padded = grid, padded
        #: (node id, reason) of every reply turned into an error this round
        self.rejected: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        requests = {m.metadata.dst_node_id: m for m in messages}
        replies: dict[int, Message] = {}
        problems: dict[int, str] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if node not in requests or node in replies:
                continue  # not asked this stage, or a second answer: the workflow never sees it
            replies[node] = reply
            problem = None if reply.has_error() else stage_reply_problem(requests[node], reply, self.padded)
            if problem is not None:
                problems[node] = problem
        sound = {node: reply for node, reply in replies.items() if node not in problems and not reply.has_error()}
        problems.update(cross_reply_problems(requests, sound))
        for node, reason in problems.items():
            problem = client_text(reason)  # it may quote the reply's own keys and values
            log.warning("SecAgg+ reply of node %s refused: %s", node, problem)
            self.rejected.append((str(node), f"SecAgg+ reply refused: {problem}"))
            replies[node] = Message(error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, problem), reply_to=requests[node])
        return list(replies.values())


def cross_reply_problems(requests: dict[int, Message], replies: dict[int, Message]) -> dict[int, str]:
    """Senders whose reply clashes with another's, each of which alone looks honest: a public key
    that another node sent too (its neighbours would refuse the stage), or a key share with the
    index of another holder's share of the same secret, or of another length (the secret could not
    be combined). Both sides of a clash are refused: the server cannot tell which one copied."""
    if not replies:
        return {}
    stage = next(iter(requests.values())).content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
    configs = {node: reply.content.config_records[RECORD_KEY_CONFIGS] for node, reply in replies.items()}
    problems: dict[int, str] = {}
    if stage == Stage.SETUP:
        holders: dict[bytes, set[int]] = {}
        for node, got in configs.items():
            for key in (got[Key.PUBLIC_KEY_1], got[Key.PUBLIC_KEY_2]):
                holders.setdefault(cast(bytes, key), set()).add(node)
        for nodes in holders.values():
            if len(nodes) > 1:
                problems.update({node: "a public key another node sent too" for node in nodes})
    elif stage == Stage.UNMASK:
        shares: dict[int, list[tuple[int, bytes]]] = {}  # secret's owner -> (holder, share)
        for node, got in configs.items():
            for owner, share in zip(cast(list[int], got[Key.NODE_ID_LIST]), cast(list[bytes], got[Key.SHARE_LIST])):
                shares.setdefault(owner, []).append((node, share))
        for held in shares.values():
            lengths = [len(share) for _, share in held]
            usual = max(set(lengths), key=lengths.count)
            indices = [share[:4] for _, share in held]
            for node, share in held:
                if len(share) != usual:
                    problems[node] = "a key share of another length than the other holders' of that secret"
                elif indices.count(share[:4]) > 1:
                    problems[node] = "a key share with the index of another holder's share of that secret"
    return problems


def stage_reply_problem(request: Message, reply: Message, padded: int) -> str | None:
    """Why ``reply`` is not a reply an honest client sends to ``request`` (a SecAgg+ stage message),
    or None."""
    try:
        sent = request.content.config_records[RECORD_KEY_CONFIGS]
        stage = sent[Key.STAGE]
        if RECORD_KEY_CONFIGS not in reply.content.config_records:
            return f"no '{RECORD_KEY_CONFIGS}' record"
        got = reply.content.config_records[RECORD_KEY_CONFIGS]
        if stage == Stage.SETUP:
            return _public_keys_problem(got)
        if stage == Stage.SHARE_KEYS:
            neighbours = {int(key) for key in sent if key != Key.STAGE} - {reply.metadata.src_node_id}
            return _ciphertexts_problem(got, neighbours)
        if stage == Stage.COLLECT_MASKED_VECTORS:
            return _masked_vector_problem(reply, got, padded)
        if stage == Stage.UNMASK:
            asked = [*_list_of(sent, Key.ACTIVE_NODE_ID_LIST, int), *_list_of(sent, Key.DEAD_NODE_ID_LIST, int)]
            return _key_shares_problem(got, asked)
        return f"a reply to unknown stage {stage!r}"
    except _Refused as refused:
        return str(refused)
    except Exception as err:  # noqa: BLE001 - a reply that cannot even be read is refused, never raised
        return f"unreadable ({type(err).__name__})"


class _Refused(ValueError):
    """Why a stage reply is refused."""


def _list_of(record: ConfigRecord, key: str, kind: type) -> list[Any]:
    values = record.get(key)
    if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
        raise _Refused(f"'{key}' is not a list of {kind.__name__}")
    return values


def _bytes_of(record: ConfigRecord, key: str) -> bytes:
    value = record.get(key)
    if not isinstance(value, bytes):
        raise _Refused(f"'{key}' is not bytes")
    return value


@cache
def _secagg_curve() -> str:
    """The elliptic curve of the keys SecAgg+ clients generate."""
    return str(generate_key_pairs()[1].curve.name)


def _public_keys_problem(got: ConfigRecord) -> str | None:
    keys = [_bytes_of(got, Key.PUBLIC_KEY_1), _bytes_of(got, Key.PUBLIC_KEY_2)]
    if keys[0] == keys[1]:
        return "its two public keys are the same"
    for key in keys:
        try:
            curve = bytes_to_public_key(key).curve.name
        except Exception as err:  # noqa: BLE001 - bytes that do not load as a key, whatever the parser says
            return f"a public key does not load ({type(err).__name__})"
        if curve != _secagg_curve():
            return f"a public key on curve {curve}, SecAgg+ uses {_secagg_curve()}"
    return None


def _ciphertexts_problem(got: ConfigRecord, neighbours: set[int]) -> str | None:
    destinations = _list_of(got, Key.DESTINATION_LIST, int)
    ciphertexts = _list_of(got, Key.CIPHERTEXT_LIST, bytes)
    if len(destinations) != len(ciphertexts):
        return f"{len(destinations)} destinations for {len(ciphertexts)} ciphertexts"
    if len(set(destinations)) != len(destinations) or set(destinations) != neighbours:
        return "key shares not for each of its neighbours once"
    return None


def _masked_vector_problem(reply: Message, got: ConfigRecord, padded: int) -> str | None:
    masked = _list_of(got, Key.MASKED_PARAMETERS, bytes)
    try:
        compat.recorddict_to_fitres(reply.content, keep_input=True)
        arrays = [bytes_to_ndarray(b) for b in masked]
    except Exception as err:  # noqa: BLE001 - records or bytes that do not decode, whatever the parser says
        return f"the masked vector does not decode ({type(err).__name__})"
    # an honest client masks [its weight factor, its share]
    if [a.shape for a in arrays] != [(1,), (padded,)]:
        return f"masked arrays of shapes {[a.shape for a in arrays]}, SecAgg+ here masks [(1,), ({padded},)]"
    for array in arrays:
        if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() >= SECAGG_MODULUS)):
            return f"masked values must be integers in [0, 2^32) (dtype {array.dtype})"
    return None


def _key_shares_problem(got: ConfigRecord, asked: list[int]) -> str | None:
    owners = _list_of(got, Key.NODE_ID_LIST, int)
    shares = _list_of(got, Key.SHARE_LIST, bytes)
    if sorted(owners) != sorted(asked) or len(shares) != len(owners):
        return "key shares for other nodes than it was asked about"
    # a Shamir share here is a 4-byte index and 16 bytes per chunk of the secret
    if any(len(share) < 20 or (len(share) - 4) % 16 for share in shares):
        return "a key share is not an index and whole 16-byte chunks"
    if len(set(shares)) != len(shares):
        return "one key share sent for two secrets"
    return None


def ring_sum_of_mean(mean: np.ndarray, count: int, mechanism: DistributedSkellam) -> np.ndarray | None:
    """Undo SecAgg+'s dequantization: it returns (S - count * M / 2) / count for the sum S of the
    shares mod 2^32; the ring sum is S mod M (None where the aggregate is not a ring vector)."""
    if mean.shape != (mechanism.padded,) or not np.isfinite(mean).all():
        return None
    total = np.rint(mean * count + count * (mechanism.modulus // 2)).astype(np.int64)
    return np.mod(total, mechanism.modulus)


# ---------------------------------------------------------------- client side


def secure_aggregation_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Client mod: SecAgg+ stages go through ``secaggplus_mod`` (after checking that its setup keeps
    the ring values exact, and that an unmask request cannot reveal both masks of one node), the
    training stage reaches the app in its own layout; other messages pass unchanged."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) == Stage.SETUP:
        _check_setup(configs, _largest_cohort(context))
    if configs.get(Key.STAGE) in (Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
        _check_list_lengths(configs, context)
    if configs.get(Key.STAGE) == Stage.UNMASK:
        _check_unmask(configs, msg.metadata.dst_node_id)

    def train_in_app_layout(fit_msg: Message, ctxt: Context) -> Message:
        fitins = compat.recorddict_to_fitins(fit_msg.content, keep_input=True)
        (x,) = parameters_to_ndarrays(fitins.parameters)
        fit_msg.content = RecordDict({ARRAYS_KEY: to_array_record({"x": x}), CONFIG_KEY: ConfigRecord(dict(fitins.config))})
        reply = call_next(fit_msg, ctxt)
        if reply.has_error():
            return reply
        share = reply.content.array_records[ARRAYS_KEY][RING_KEY].numpy()
        modulus = int(ctxt.state.config_records[RECORD_KEY_STATE][Key.TARGET_RANGE])  # type: ignore[arg-type]  # as _check_setup admitted it
        shifted = share.astype(np.float64) - modulus // 2
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([shifted]), num_examples=1, metrics={})
        return Message(content=compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=fit_msg)

    return secaggplus_mod(msg, context, train_in_app_layout)


def _largest_cohort(context: Context) -> int:
    """The largest cohort this client's run can draw (:attr:`DistributedSkellam.max_cohort`); a
    ConfigError for a run that is not ``distributed`` (it has no SecAgg+ to take part in)."""
    from clients.client_app import partition_of  # the ClientApp imports this module
    from fl_dp.config import ConfigError, RunConfig
    from fl_dp.distributed import mechanism_for

    _, cfg = partition_of(context, RunConfig.from_flwr(context.run_config))
    if cfg.privacy_model != "distributed":
        raise ConfigError(f"a SecAgg+ setup for a run with privacy-model {cfg.privacy_model!r}: refused")
    return mechanism_for(cfg).max_cohort


def _check_setup(configs: ConfigRecord, largest_cohort: int) -> None:
    """Refuse a SecAgg+ setup whose quantization would re-round or clip the shares, whose
    reconstruction threshold is not a majority of the shares, or whose cohort this run cannot
    draw (each share costs the client work: a server naming millions would stall it)."""
    target = configs.get(Key.TARGET_RANGE)
    ok = (
        isinstance(target, int)
        and configs.get(Key.CLIPPING_RANGE) == float(target // 2)
        and configs.get(Key.MAX_WEIGHT) == 1.0
        and configs.get(Key.MOD_RANGE) == SECAGG_MODULUS
    )
    if not ok:
        raise ValueError("SecAgg+ setup does not keep fl-dp's ring values exact (clipping range M/2, weight 1, modulus 2^32)")
    shares, threshold, cohort = (configs.get(key) for key in (Key.SHARE_NUMBER, Key.THRESHOLD, Key.SAMPLE_NUMBER))
    if not (
        all(isinstance(v, int) and not isinstance(v, bool) for v in (shares, threshold, cohort))
        and 2 <= cast(int, shares) <= cast(int, cohort) <= largest_cohort
        and cast(int, shares) // 2 < cast(int, threshold) <= cast(int, shares)
    ):
        # below a majority, fewer colluding neighbours than SecAgg+ assumes could rebuild this
        # client's mask seeds with the server and open its share
        raise ValueError(
            f"SecAgg+ setup: reconstruction threshold {threshold!r} of {shares!r} shares in a cohort of {cohort!r} "
            f"is not a majority of the shares, or not a cohort this run draws (at most {largest_cohort})"
        )


def _check_unmask(configs: ConfigRecord, own_node_id: int) -> None:
    """Refuse an unmask request that would reveal both masks of one node: a node listed both as
    active (its self-mask seed's shares) and as dropped (its pairwise key's shares) would have its
    masked vector opened, and this node itself is not dropped while it answers. (A server that
    sends inconsistent lists to different clients is beyond one client's sight: SecAgg+ without
    its consistency round assumes a server that follows the protocol.)"""
    active, dead = configs.get(Key.ACTIVE_NODE_ID_LIST), configs.get(Key.DEAD_NODE_ID_LIST)
    if isinstance(active, list) and isinstance(dead, list) and (set(active) & set(dead) or own_node_id in dead):
        raise ValueError("SecAgg+ unmask request lists a node both active and dropped, or this node as dropped")


def _check_list_lengths(configs: ConfigRecord, context: Context) -> None:
    """Refuse a stage request that names more nodes than this client has shares (its setup's share
    number: itself and its neighbours): each named node costs it a key agreement or a decryption,
    so a server listing millions would stall it."""
    state = context.state.config_records.get(RECORD_KEY_STATE)
    shares = state.get("share_num") if state is not None else None
    if not isinstance(shares, int) or isinstance(shares, bool):
        return  # no setup yet: Flower's mod refuses a stage out of order

    def length(key: str) -> int:
        value = configs.get(key)
        return len(value) if isinstance(value, list) else 0

    stage = configs.get(Key.STAGE)
    if stage == Stage.SHARE_KEYS:
        named = len(configs) - 1  # one key pair per node, the stage key aside
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        named = max(length(Key.CIPHERTEXT_LIST), length(Key.SOURCE_LIST))
    else:
        named = length(Key.ACTIVE_NODE_ID_LIST) + length(Key.DEAD_NODE_ID_LIST)
    if named > shares:
        raise ValueError(f"SecAgg+ {stage!r} request names {named} nodes to a client with {shares} shares")
