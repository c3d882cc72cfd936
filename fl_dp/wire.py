"""The wire format: what a client sends (a dense, sparse or sign vector as named numpy arrays),
the record and metric keys of requests and replies, and their Flower records.

The same encoding is used in Flower messages (one ``ArrayRecord``) and in the in-process loop,
so validation and byte counts are identical in both. The server strategy and the ClientApp both
read their keys from here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fl_dp.compressors import SparseVector, pack_signs, unpack_signs

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, RecordDict

# records of a training request and its reply
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
# records of a client's context.state: its algorithm state (g_i, m_i, e_i) and its own ledger
STATE_RECORD = "fl-dp-state"
LEDGER_RECORD = "fl-dp-ledger"

# training-request config keys
SERVER_ROUND = "server-round"
#: the checkpoint round a resumed run started after (clients restore their state as of that round)
RESUMED_FROM = "resumed-from"
#: ``distributed``: the number of clients of the round's cohort (each share carries 1/n of the noise)
COHORT_SIZE = "cohort-size"

# reply metric keys (kebab-case, as Flower records them)
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
DP_NOISE = "dp-noise-multiplier"
DP_RATE = "dp-sample-rate"
DP_STEPS = "dp-steps"
CLIENT_EPSILON = "client-epsilon"
#: reply metric (1): the client trained from an empty error-feedback state (first time, or lost)
STATE_FRESH = "state-fresh"
#: the client's own ledger rows inside its state (kept in :data:`LEDGER_RECORD` by the ClientApp)
LEDGER_STATE = "privacy-ledger"

#: reply metric: the client's partition id (node config under Flower), so that the in-process loop
#: can replay a simulation whose SuperNodes got random node ids; never used to aggregate or account
PARTITION_ID = "partition-id"

#: what an honest client reports: always, under ``local`` privacy, and only without privacy
ALWAYS_REPORTED = frozenset({NUM_EXAMPLES, STATE_FRESH, PARTITION_ID})
PRIVACY_RECORD = frozenset({DP_NOISE, DP_RATE, DP_STEPS, CLIENT_EPSILON})
NON_PRIVATE_STATISTICS = frozenset({TRAIN_LOSS, "grad-norm"})


class MalformedMessage(ValueError):
    """A client message that cannot be decoded into a finite vector of the model's size."""


class NonFiniteMessage(MalformedMessage):
    """A message that decodes to NaN or Inf: a hostile client's, or every honest client's once the
    global model has diverged."""


@dataclass(frozen=True)
class SignVector:
    """``scale`` times a +-1 vector, sent as packed bits (and one float32 when scale != 1)."""

    signs: torch.Tensor
    scale: float = 1.0

    def to_dense(self) -> torch.Tensor:
        return self.signs * self.scale


Payload = torch.Tensor | SparseVector | SignVector


def encode(message: Payload) -> dict[str, np.ndarray]:
    """Named arrays that carry ``message`` on the wire."""
    if isinstance(message, SignVector):
        if message.scale == 1.0:
            return {"signs": pack_signs(message.signs)}
        return {"signs": pack_signs(message.signs), "scale": np.array([message.scale], np.float32)}
    if isinstance(message, SparseVector):
        if message.is_full:
            return {"dense": message.to_dense().numpy().astype(np.float32)}
        return {
            "values": message.values.numpy().astype(np.float32),
            "indices": message.indices.numpy().astype(np.int32),
        }
    if isinstance(message, torch.Tensor):
        return {"dense": message.detach().numpy().astype(np.float32)}
    raise TypeError(f"cannot encode a {type(message).__name__}")


def payload_bytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes of the arrays' data (Flower adds a small header per array on top)."""
    return int(sum(a.nbytes for a in arrays.values()))


def decode(arrays: Any, dim: int, layouts: Collection[frozenset[str]] | None = None) -> torch.Tensor:
    """The dense length-``dim`` vector a message stands for; raises :class:`MalformedMessage`.

    Exactly the dtypes :func:`encode` writes are accepted (float32 values, int32 indices, uint8
    sign bytes, one float32 scale), and with ``layouts`` only those key sets: a strategy whose
    clients send bits never receives a dense vector, nor a scale it did not ask for.
    """
    if not isinstance(arrays, Mapping) or not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise MalformedMessage("a message is a mapping of names to numpy arrays")
    keys = frozenset(arrays)
    if layouts is not None and keys not in layouts:
        raise MalformedMessage(f"layout {sorted(keys)} is not one this strategy's clients send")
    if keys == {"dense"}:
        dense = _as_1d(arrays["dense"], "dense", np.float32)
        if dense.size != dim:
            raise MalformedMessage(f"dense message has {dense.size} entries, the model has {dim}")
        vector = torch.from_numpy(dense.copy())
    elif keys == {"values", "indices"}:
        values = _as_1d(arrays["values"], "values", np.float32)
        indices = _as_1d(arrays["indices"], "indices", np.int32)
        if values.size != indices.size:
            raise MalformedMessage(f"{values.size} values but {indices.size} indices")
        if values.size > dim:
            raise MalformedMessage(f"{values.size} values for a model of {dim}")
        if indices.size and (indices.min() < 0 or indices.max() >= dim):
            raise MalformedMessage(f"indices out of range [0, {dim})")
        if np.unique(indices).size != indices.size:
            raise MalformedMessage("repeated indices")
        sparse = SparseVector(torch.from_numpy(values.copy()), torch.from_numpy(indices.copy()), dim)
        vector = sparse.to_dense()
    elif keys in ({"signs"}, {"signs", "scale"}):
        packed = _as_1d(arrays["signs"], "signs", np.uint8)
        try:
            vector = unpack_signs(packed, dim)
        except ValueError as err:
            raise MalformedMessage(str(err)) from err
        if "scale" in arrays:
            scale = _as_1d(arrays["scale"], "scale", np.float32)
            if scale.size != 1:
                raise MalformedMessage(f"scale must hold one value, got {scale.size}")
            vector = vector * float(scale[0])
    else:
        raise MalformedMessage(f"unknown message layout {sorted(keys)}")
    if not torch.isfinite(vector).all():
        raise NonFiniteMessage("message holds NaN or Inf")
    return vector


#: the most characters of a client's own text (an error reason, its metric or array names) a
#: rejection repeats: each round's rejections are kept in the results table and the checkpoint
CLIENT_TEXT_LIMIT = 300


def client_text(text: object, limit: int = CLIENT_TEXT_LIMIT) -> str:
    """Text a client chose, as it may enter a log line or the results table: line breaks and other
    control characters escaped (a reply cannot forge log lines), at most ``limit`` characters (nor
    grow the server's table by megabytes a round)."""
    raw = str(text)
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw[: limit + 1])
    return shown if len(raw) <= limit and len(shown) <= limit else shown[:limit] + "..."


def _as_1d(array: np.ndarray, name: str, dtype: type) -> np.ndarray:
    if array.ndim != 1:
        raise MalformedMessage(f"{name!r} must be 1-D, got shape {array.shape}")
    if array.dtype != np.dtype(dtype):
        raise MalformedMessage(f"{name!r} has dtype {array.dtype}, clients send {np.dtype(dtype)}")
    return array


@dataclass(frozen=True)
class Reply:
    """One client's answer: who, the wire arrays, and scalar metrics (``error``: why the transport
    could not read them)."""

    client_id: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


#: what a Flower MetricRecord holds
MetricValues = dict[str, int | float | list[int] | list[float]]


def metric_values(metrics: Mapping[str, float]) -> MetricValues:
    """Scalar metrics in the type Flower's MetricRecord takes."""
    return {key: float(value) for key, value in metrics.items()}


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def parse_request(message: Message) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A server's request as (arrays, config), or :class:`MalformedMessage` with the reason: its
    'arrays' record must decode and its 'config' record be there (other records, a mod's, are not
    this function's)."""
    content = message.content
    if ARRAYS_KEY not in content.array_records or CONFIG_KEY not in content.config_records:
        raise MalformedMessage(f"a request holds an '{ARRAYS_KEY}' and a '{CONFIG_KEY}' record")
    return _decoded_arrays(content, "request arrays"), dict(content.config_records[CONFIG_KEY].items())


def request_round(config: Mapping[str, Any], num_server_rounds: int) -> tuple[int, int]:
    """(server round, resumed-from round) of a training request, or :class:`MalformedMessage`:
    whole numbers with 0 <= resumed-from < round <= num-server-rounds."""
    server_round, resumed_from = _whole(config, SERVER_ROUND), _whole(config, RESUMED_FROM, 0)
    if not 0 <= resumed_from < server_round <= num_server_rounds:
        raise MalformedMessage(
            f"request round {server_round} (resumed from {resumed_from}) is not a round of this run's {num_server_rounds}"
        )
    return server_round, resumed_from


def _decoded_arrays(content: RecordDict, what: str) -> dict[str, np.ndarray]:
    """The message's 'arrays' record as numpy arrays, or :class:`MalformedMessage` saying why not."""
    try:
        return from_array_record(content.array_records[ARRAYS_KEY])
    except Exception as err:  # noqa: BLE001 - whatever the bytes make numpy raise, the message is malformed
        raise MalformedMessage(f"{what} do not decode: {type(err).__name__}: {err}"[:300]) from None


def _whole(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessage(f"request {key} must be an integer, got {value!r}")
    return value


def parse_reply(message: Message) -> Reply:
    """The client's wire arrays and metrics, or :class:`MalformedMessage` with the reason.

    Any record, array or metric a client can put in a message is handled here: a truncated or
    non-numpy array, a missing record, a list where a number belongs. Whether the values are
    what the strategy expects is the server core's to judge.
    """
    content = message.content
    if set(content.array_records) != {ARRAYS_KEY} or set(content.metric_records) != {METRICS_KEY}:
        raise MalformedMessage(f"a reply holds exactly one '{ARRAYS_KEY}' and one '{METRICS_KEY}' record")
    if content.config_records:
        raise MalformedMessage("a reply holds no config record")
    arrays = _decoded_arrays(content, "arrays")
    metrics: dict[str, Any] = dict(content.metric_records[METRICS_KEY].items())  # checked by the server core
    return Reply(str(message.metadata.src_node_id), arrays, metrics)


def parse_evaluation_reply(message: Message) -> Reply:
    """A client's evaluation report (one metrics record, nothing else), or :class:`MalformedMessage`;
    its values are judged by :func:`fl_dp.federated_evaluation.check_report`."""
    content = message.content
    if set(content.metric_records) != {METRICS_KEY} or content.array_records or content.config_records:
        raise MalformedMessage(f"an evaluation reply holds exactly one '{METRICS_KEY}' record")
    metrics: dict[str, Any] = dict(content.metric_records[METRICS_KEY].items())  # checked by the server core
    return Reply(str(message.metadata.src_node_id), {}, metrics)
