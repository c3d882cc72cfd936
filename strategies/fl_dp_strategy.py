"""A Message-API strategy that moves tensors between Flower and :class:`fl_dp.server.ServerCore`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fl_dp.config import ConfigError
from fl_dp.server import ServerCore
from fl_dp.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    SERVER_ROUND,
    MalformedMessage,
    Reply,
    metric_values,
    parse_evaluation_reply,
    parse_reply,
    to_array_record,
)
from strategies.flower_grid import connected_in_order

log = logging.getLogger("fl_dp")


class FlDpStrategy(Strategy):
    """Any fl-dp algorithm as a Flower strategy.

    ``configure_train`` broadcasts the ``arrays`` Flower hands it (the global vector ``x``) with
    the round's config; ``aggregate_train`` returns the next arrays and the round's metrics.
    Evaluation closes each round through ``start(evaluate_fn=...)`` (by default :meth:`evaluate`):
    on the run's test split, or, with ``evaluation = "federated"``, from the reports that
    ``configure_evaluate`` / ``aggregate_evaluate`` collected from the clients just before.
    """

    def __init__(self, core: ServerCore, first_round: int = 1) -> None:
        self.core = core
        #: under ``distributed``, the SecAgg+ grid that holds each round's secure sum
        self.secure: Any = None
        # Flower counts the rounds of this start() from 1; a resumed run continues the run's count
        self.round_offset = first_round - 1

    def summary(self) -> None:
        cfg = self.core.cfg
        log.info(
            "fl-dp strategy %s (%s): %d clients, %d per round, %d parameters, noise multiplier %.4g",
            cfg.strategy,
            cfg.privacy_model,
            cfg.num_clients,
            cfg.clients_per_round,
            self.core.dim,
            self.core.noise_multiplier,
        )

    def current_arrays(self) -> ArrayRecord:
        """The global vector ``x`` as Flower's ArrayRecord."""
        return to_array_record({"x": self.core.x.numpy()})

    def initial_arrays(self) -> ArrayRecord:
        return self.current_arrays()

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop, with this strategy's central evaluation (:meth:`evaluate`) unless another is given."""
        return super().start(
            grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn or self.evaluate
        )

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        connected = wait_for_nodes_or_give_up(grid, self.core.cfg.min_clients_per_round, self.core.cfg.round_timeout)
        node_ids = self.core.sample(connected)
        broadcast_arrays, broadcast_config = self.core.broadcast(server_round, _vector(arrays))
        record = RecordDict(
            {
                ARRAYS_KEY: to_array_record(broadcast_arrays),
                CONFIG_KEY: ConfigRecord({**dict(config), **broadcast_config}),
            }
        )
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=node_id) for node_id in node_ids]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        if self.secure is not None:
            # SecAgg+ answered inside the grid: no reply reaches the strategy, only the sum
            outcome = self.secure.take()
            row = self.core.aggregate_secure(server_round, outcome.total, outcome.contributors, outcome.failures)
            return self.current_arrays(), metric_record(row)
        parsed, failures = read_replies(replies, parse_reply)
        row = self.core.aggregate(server_round, parsed, failures)
        return self.current_arrays(), metric_record(row)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Central evaluation of ``arrays`` after round ``server_round`` (where due), the round's progress
        line, and its checkpoint where one is due. Round 0 (Flower's look at the initial arrays) is skipped."""
        if server_round == 0:
            return None
        server_round += self.round_offset
        metrics = self.core.evaluate_round(server_round, _vector(arrays))
        if self.core.checkpoint_due(server_round):
            self.core.write_checkpoint()
        return MetricRecord(metric_values(metrics)) if metrics else None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Federated evaluation where due: the round's evaluation cohort gets the new global vector."""
        server_round += self.round_offset
        if not self.core.federated_evaluation_due(server_round):
            return []
        node_ids = self.core.evaluation_cohort(connected_in_order(grid), server_round)
        record = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: ConfigRecord({**dict(config), SERVER_ROUND: server_round})})
        return [Message(content=record, message_type=MessageType.EVALUATE, dst_node_id=node_id) for node_id in node_ids]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The clients' evaluation reports, checked and combined by the core (they become the round's
        test metrics in :meth:`evaluate`)."""
        server_round += self.round_offset
        if not self.core.federated_evaluation_due(server_round):
            return None
        parsed, failures = read_replies(replies, parse_evaluation_reply)
        return MetricRecord(metric_values(self.core.aggregate_evaluation(server_round, parsed, failures)))


def read_replies(replies: Iterable[Message], parse: Callable[[Message], Reply]) -> tuple[list[Reply], list[tuple[str, str]]]:
    """Flower's replies as the core takes them: the parsed ones, a malformed one as a Reply carrying
    its reason (so that the core charges or rejects an addressed client), and the error replies."""
    parsed: list[Reply] = []
    failures: list[tuple[str, str]] = []
    for message in replies:
        client = str(message.metadata.src_node_id)
        if message.has_error():
            failures.append((client, f"client error: {message.error.reason}"))
            continue
        try:
            parsed.append(parse(message))
        except MalformedMessage as err:
            parsed.append(Reply(client, {}, {}, error=str(err)))
    return parsed, failures


def metric_record(row: dict[str, Any]) -> MetricRecord:
    """The round's numeric metrics as Flower's MetricRecord (text columns stay in the core's rows;
    NaN stays out rather than travelling silently)."""
    numeric = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return MetricRecord(metric_values({k: v for k, v in numeric.items() if math.isfinite(v) or math.isinf(v)}))


def _vector(arrays: ArrayRecord) -> Any:
    """The global vector in Flower's arrays (the one array ``x``)."""
    if "x" not in arrays:
        raise ValueError("the strategy's arrays hold the global vector 'x'")
    return arrays["x"].numpy()


def wait_for_nodes(grid: Grid, num_nodes: int, timeout: float, at_least: int = 1, poll: float = 1.0) -> list[int]:
    """Block until ``num_nodes`` SuperNodes are connected, so that round 1 samples from all of them;
    after ``timeout`` seconds, go on with those connected if they are ``at_least`` (logged)."""
    nodes = wait_for_nodes_or_give_up(grid, num_nodes, timeout, poll)
    if len(nodes) >= num_nodes:
        return nodes
    if len(nodes) >= at_least:
        log.warning("only %d of num-clients=%d nodes connected after %.0f s: starting with them", len(nodes), num_nodes, timeout)
        return nodes
    raise ConfigError(
        f"only {len(nodes)} of num-clients={num_nodes} nodes connected after {timeout:.0f} s "
        f"(min-clients-per-round={at_least}); start more SuperNodes or lower num-clients"
    )


def wait_for_nodes_or_give_up(grid: Grid, num_nodes: int, timeout: float, poll: float = 1.0) -> list[int]:
    """The connected SuperNodes once ``num_nodes`` are, or those connected after ``timeout`` seconds
    (a round with too few is skipped by :meth:`ServerCore.sample`, with its reason)."""
    deadline = time.monotonic() + timeout
    nodes = connected_in_order(grid)
    while len(nodes) < num_nodes and time.monotonic() < deadline:
        log.info("waiting for clients: %d of %d connected", len(nodes), num_nodes)
        time.sleep(poll)
        nodes = connected_in_order(grid)
    return nodes


def wait_for_federation(grid: Grid, timeout: float, settle: float = 3.0, poll: float = 1.0) -> list[int]:
    """The connected SuperNodes once their number has not changed for ``settle`` seconds.

    A simulation registers all its virtual SuperNodes while the ServerApp starts; a deployment's
    nodes connect over time, so the population is what is there once arrivals stop.
    """
    nodes, settled = _settled_nodes(grid, timeout, settle, poll)
    if not settled:
        raise ConfigError(f"no SuperNode connected after {timeout:.0f} s (num-clients = 0: every SuperNode of the federation)")
    return nodes


def wait_for_simulated_nodes(grid: Grid, num_nodes: int, timeout: float, settle: float = 3.0, poll: float = 0.05) -> list[int]:
    """A simulation's SuperNodes once their number is ``num_nodes``; a ConfigError naming
    ``num-clients`` once it is not and stops changing for ``settle`` seconds.

    The engine registers every virtual SuperNode while the ServerApp starts and gives each the
    node config ``num-partitions`` = their number, so the ClientApp refuses any other
    ``num-clients``: waiting ``node-wait-timeout`` for nodes that never come, then running
    rounds that every client refuses, would be a run that trains nothing.
    """
    nodes, _ = _settled_nodes(grid, timeout, settle, poll, wanted=num_nodes)
    if len(nodes) != num_nodes:
        raise ConfigError(
            f"num-clients={num_nodes}, but this simulation's federation has {len(nodes)} SuperNodes, each told "
            f"num-partitions={len(nodes)}: set num-clients = 0 (every SuperNode) or the federation's size to "
            f"{num_nodes} (scripts/simulate.sh {num_nodes}, or the federation's num-supernodes)"
        )
    return nodes


def _settled_nodes(grid: Grid, timeout: float, settle: float, poll: float, wanted: int | None = None) -> tuple[list[int], bool]:
    """(the connected SuperNodes, whether they settled): settled once there are ``wanted`` of them or
    their number, above zero, has not changed for ``settle`` seconds; unsettled after ``timeout``."""
    deadline = time.monotonic() + timeout
    nodes = connected_in_order(grid)
    stable_since = time.monotonic()
    while True:
        if len(nodes) == wanted or (nodes and time.monotonic() - stable_since >= settle):
            return nodes, True
        if time.monotonic() > deadline:
            return nodes, False
        time.sleep(poll)
        now = connected_in_order(grid)
        if len(now) != len(nodes):
            nodes, stable_since = now, time.monotonic()
