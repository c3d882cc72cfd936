"""The Flower ClientApp: one training request in, one compressed / noised message out (and, under
federated evaluation, one evaluation request in, the held-out loss and accuracy out).

The client's persistent state (error-feedback vector g_i, momentum) and its own privacy ledger
live in two records of ``context.state``, so that they survive across rounds, including rounds
the client is not sampled in, in simulation and on a SuperNode alike.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_dp.client import ClientCore, local_data
from fl_dp.client_state import ClientStateStore
from fl_dp.config import ConfigError, RunConfig
from fl_dp.privacy import Release
from fl_dp.privacy_floor import NODE_KEYS, STATE_DIR_KEY, NodeSpending, PrivacyFloor
from fl_dp.wire import (
    ARRAYS_KEY,
    DP_NOISE,
    DP_RATE,
    DP_STEPS,
    LEDGER_RECORD,
    LEDGER_STATE,
    METRICS_KEY,
    STATE_RECORD,
    from_array_record,
    metric_values,
    parse_request,
    request_round,
    to_array_record,
)
from strategies.secagg_bridge import secure_aggregation_mod

STATE_KEY, LEDGER_KEY = STATE_RECORD, LEDGER_RECORD
#: the one array of the ledger record: (noise multiplier, sample rate, steps) rows, float64
LEDGER_ROWS = "rows"

#: every node config key this ClientApp reads (Flower's simulation sets the first two on each node)
NODE_CONFIG_KEYS = ("partition-id", "num-partitions", "data-path", STATE_DIR_KEY, *NODE_KEYS)
#: of those, the ones that name a path
NODE_PATH_KEYS = ("data-path", STATE_DIR_KEY)

# SecAgg+ stages of a distributed run pass through this mod; other messages reach train() unchanged
app = ClientApp(mods=[secure_aggregation_mod])


@lru_cache(maxsize=4)
def _clients_of_run(cfg: RunConfig, floor: PrivacyFloor | None, data_path: str = "") -> dict[int, ClientCore]:
    return {}


def _client(cfg: RunConfig, partition_id: int, floor: PrivacyFloor | None = None, data_path: str = "") -> ClientCore:
    """The process's ClientCore of this partition, built on its first message.

    A Ray actor serves every partition in turn, so a cache bounded below num-clients
    would miss on every message; all partitions of a run are kept (each holds its
    samples and the algorithm, the model is shared).
    """
    clients = _clients_of_run(cfg, floor, data_path)
    if partition_id not in clients:
        data = local_data(cfg, data_path) if data_path else None
        clients[partition_id] = ClientCore(cfg, partition_id, floor, data)
    return clients[partition_id]


def privacy_floor_of(context: Context) -> PrivacyFloor | None:
    """The node operator's privacy floor (``max-epsilon``, ``privacy-delta``, ``min-noise-multiplier``)."""
    try:
        return PrivacyFloor.from_node_config(context.node_config)
    except ValueError as err:
        raise ConfigError(f"node config: {err}") from None


def check_node_config(context: Context) -> None:
    """Refuse a node config key this app does not read, or a path that is not a string: a misspelt
    privacy floor (``max_epsilon``) would otherwise leave the node without the floor it asked for."""
    unknown = sorted(str(key) for key in context.node_config if key not in NODE_CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown node config keys: {', '.join(unknown)}; a SuperNode's --node-config takes {', '.join(NODE_CONFIG_KEYS)}"
        )
    for key in NODE_PATH_KEYS:
        if key in context.node_config and not isinstance(context.node_config[key], str):
            raise ConfigError(f"node config {key} must be a path in quotes, got {context.node_config[key]!r}")


def partition_of(context: Context, cfg: RunConfig) -> tuple[int, RunConfig]:
    """This node's partition id, and the run config with ``num-clients = 0`` as its ``num-partitions``
    (after :func:`check_node_config`)."""
    check_node_config(context)
    partition_id = _node_integer(context, "partition-id")
    num_partitions = _node_integer(context, "num-partitions")
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"node config partition-id={partition_id} is outside [0, num-partitions={num_partitions})")
    if cfg.num_clients and num_partitions != cfg.num_clients:
        raise ConfigError(f"node has num-partitions={num_partitions} but the run has num-clients={cfg.num_clients}")
    return partition_id, cfg.for_federation(num_partitions)


def _node_integer(context: Context, key: str) -> int:
    """Node config ``key`` as an int: an integer-valued number, never a bool, a string or a fraction."""
    if key not in context.node_config:
        raise ConfigError(
            f"node config lacks '{key}': start the SuperNode with --node-config 'partition-id=.. num-partitions=..'"
        )
    value = context.node_config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ConfigError(f"node config {key} must be an integer, got {value!r}")
    return int(value)


def load_state(context: Context) -> dict[str, torch.Tensor]:
    """The client's algorithm state and its ledger (under ``privacy-ledger``), from their records."""
    records = context.state.array_records
    state = {}
    if STATE_KEY in records:
        state = {k: torch.from_numpy(v.copy()) for k, v in from_array_record(records[STATE_KEY]).items()}
    if LEDGER_KEY in records:
        state[LEDGER_STATE] = torch.from_numpy(from_array_record(records[LEDGER_KEY])[LEDGER_ROWS].copy())
    return state


def save_state(context: Context, state: dict[str, torch.Tensor]) -> None:
    """The algorithm state in one record, the client's own ledger in its own (dtypes kept: float64 rows)."""
    algorithm_state = {k: v.detach().numpy() for k, v in state.items() if k != LEDGER_STATE}
    context.state[STATE_KEY] = to_array_record(algorithm_state)
    if LEDGER_STATE in state:
        context.state[LEDGER_KEY] = to_array_record({LEDGER_ROWS: state[LEDGER_STATE].detach().numpy()})


def state_store_of(context: Context, cfg: RunConfig, partition_id: int) -> ClientStateStore | None:
    """The client's state file under the node config's ``state-dir``, else the run's
    ``client-state-dir``; None where neither is set (state kept in memory only)."""
    node_directory = str(context.node_config.get(STATE_DIR_KEY, ""))
    directory = node_directory or cfg.client_state_dir
    if not directory:
        return None
    key = f"node config {STATE_DIR_KEY}" if node_directory else "client-state-dir"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        writable = os.access(directory, os.W_OK | os.X_OK)
    except (OSError, ValueError) as err:  # a file in the way, a NUL byte, no permission
        raise ConfigError(f"{key} {directory!r} cannot be this client's state directory ({err})") from None
    if not writable:
        raise ConfigError(f"{key} {directory!r} cannot be this client's state directory (not writable)")
    # checked before training: a client that trained and then failed to save would lose the round's state
    return ClientStateStore(directory, cfg, partition_id)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return train_with(msg, context, RunConfig.from_flwr(context.run_config))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return evaluate_with(msg, context, RunConfig.from_flwr(context.run_config))


def evaluate_with(msg: Message, context: Context, run_cfg: RunConfig) -> Message:
    """Answer one evaluation message (``evaluation = "federated"``): the global vector's loss and
    accuracy on this client's held-out examples; the client's state is not touched."""
    partition_id, cfg = partition_of(context, run_cfg)
    client = _client(cfg, partition_id, privacy_floor_of(context), str(context.node_config.get("data-path", "")))
    arrays, _ = parse_request(msg)
    metrics = client.evaluate(arrays)
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metric_values(metrics))}), reply_to=msg)


def train_with(msg: Message, context: Context, run_cfg: RunConfig) -> Message:
    """Answer one training message of the run ``run_cfg`` (this node's partition from its node config)."""
    partition_id, cfg = partition_of(context, run_cfg)
    floor = privacy_floor_of(context)
    # a SuperNode with its own files trains on them (node config data-path); they never leave it
    client = _client(cfg, partition_id, floor, str(context.node_config.get("data-path", "")))
    arrays, config = parse_request(msg)
    server_round, resumed_from = request_round(config, cfg.num_server_rounds)
    store = state_store_of(context, cfg, partition_id)
    state = load_state(context)
    if not state and store is not None:
        state = store.restore(context.run_id, resumed_from)
    # a floor with a budget counts what the node spent over every run, in the node's own state-dir
    if floor is not None and floor.budgeted:
        spending = NodeSpending(str(context.node_config[STATE_DIR_KEY]), partition_id)
        with spending.locked() as spent:
            out_arrays, metrics, new_state = client.train(arrays, config, state, spent=spent)
            if DP_NOISE in metrics:
                # counted before the reply leaves: a release the server may have is never one the node forgot
                spending.add(spent, Release(metrics[DP_NOISE], metrics[DP_RATE], int(metrics[DP_STEPS])))
    else:
        out_arrays, metrics, new_state = client.train(arrays, config, state)
    save_state(context, new_state)
    if store is not None:
        store.save(context.run_id, server_round, state, new_state)
    content = RecordDict({ARRAYS_KEY: to_array_record(out_arrays), METRICS_KEY: MetricRecord(metric_values(metrics))})
    return Message(content=content, reply_to=msg)
