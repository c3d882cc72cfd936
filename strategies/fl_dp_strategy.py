"""A Message-API strategy that moves tensors between Flower and :class:`fl_dp.federation.ServerCore`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl_dp.config import ConfigError
from fl_dp.federation import Reply, ServerCore
from fl_dp.wire import MalformedMessage

log = logging.getLogger("fl_dp")

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def parse_reply(message: Message) -> Reply:
    """The client's wire arrays and metrics, or :class:`MalformedMessage` with the reason.

    Any record, array or metric a client can put in a message is handled here: a truncated or
    non-numpy array, a missing record, a list where a number belongs. Whether the values are
    what the strategy expects is :meth:`ServerCore.aggregate`'s to judge.
    """
    content = message.content
    if set(content.array_records) != {ARRAYS_KEY} or set(content.metric_records) != {METRICS_KEY}:
        raise MalformedMessage(f"a reply holds exactly one '{ARRAYS_KEY}' and one '{METRICS_KEY}' record")
    if content.config_records:
        raise MalformedMessage("a reply holds no config record")
    try:
        arrays = from_array_record(content.array_records[ARRAYS_KEY])
    except Exception as err:  # noqa: BLE001 - whatever the bytes make numpy raise, the reply is malformed
        raise MalformedMessage(f"arrays do not decode: {type(err).__name__}: {err}"[:300]) from None
    return Reply(str(message.metadata.src_node_id), arrays, dict(content.metric_records[METRICS_KEY]))


class FlDpStrategy(Strategy):
    """Any fl-dp algorithm as a Flower strategy.

    Training requests carry the global vector ``x`` and the round's config;
    replies carry the client's wire arrays and metrics. Evaluation is central
    (the server's test split), so no evaluation messages are sent.
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
            "fl-dp strategy %s: %d clients, %d per round, %d parameters, noise multiplier %.4g",
            cfg.strategy,
            cfg.num_clients,
            cfg.clients_per_round,
            self.core.dim,
            self.core.noise_multiplier,
        )

    def initial_arrays(self) -> ArrayRecord:
        return to_array_record({"x": self.core.x.numpy()})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        connected = wait_for_nodes_or_give_up(grid, self.core.cfg.min_clients_per_round, self.core.cfg.round_timeout)
        node_ids = self.core.sample(connected)
        broadcast_arrays, broadcast_config = self.core.broadcast(server_round)
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
            return self._finish(server_round, row)
        parsed: list[Reply] = []
        failures: list[tuple[str, str]] = []
        for message in replies:
            client = str(message.metadata.src_node_id)
            if message.has_error():
                failures.append((client, f"client error: {message.error.reason}"))
                continue
            try:
                parsed.append(parse_reply(message))
            except MalformedMessage as err:
                # passed on with its reason, so that the ledger charges an addressed client
                parsed.append(Reply(client, {}, {}, error=str(err)))
        row = self.core.aggregate(server_round, parsed, failures)
        return self._finish(server_round, row)

    def _finish(self, server_round: int, row: dict[str, Any]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.core.checkpoint_due(server_round):
            self.core.write_checkpoint()
        numeric = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # MetricRecord holds what Flower can serialise: NaN stays out rather than travelling silently.
        metrics = MetricRecord({k: v for k, v in numeric.items() if math.isfinite(v) or math.isinf(v)})
        return self.initial_arrays(), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


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
    nodes = list(grid.get_node_ids())
    while len(nodes) < num_nodes and time.monotonic() < deadline:
        log.info("waiting for clients: %d of %d connected", len(nodes), num_nodes)
        time.sleep(poll)
        nodes = list(grid.get_node_ids())
    return nodes


def wait_for_federation(grid: Grid, timeout: float, settle: float = 3.0, poll: float = 1.0) -> list[int]:
    """The connected SuperNodes once their number has not changed for ``settle`` seconds.

    A simulation registers all its virtual SuperNodes before the ServerApp starts; a deployment's
    nodes connect over time, so the population is what is there once arrivals stop.
    """
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    stable_since = time.monotonic()
    while True:
        if nodes and time.monotonic() - stable_since >= settle:
            return nodes
        if time.monotonic() > deadline:
            raise ConfigError(f"no SuperNode connected after {timeout:.0f} s (num-clients = 0: every SuperNode of the federation)")
        time.sleep(poll)
        now = list(grid.get_node_ids())
        if len(now) != len(nodes):
            nodes, stable_since = now, time.monotonic()
