"""Flower's SecAgg+ under fl-dp's Message-API strategy (``privacy-model = "distributed"``).

In flwr 1.41 and 1.42, SecAgg+ exists only on the legacy path: ``SecAggPlusWorkflow`` drives a legacy
``Strategy`` (``configure_fit`` / ``aggregate_fit``) inside a ``LegacyContext``, and the client's
``secaggplus_mod`` reads and writes the legacy ``fitins.*`` / ``fitres.*`` records. This module is
the bridge, in one place:

- server: :class:`SecAggPlusGrid` wraps the run's Grid; a round's training messages go through the
  four SecAgg+ stages with a one-round legacy shim strategy, and the strategy receives only
  :class:`SecureOutcome` (the ring sum of the surviving shares and who contributed);
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
from typing import Any

import flwr
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow

from fl_dp.distributed import RING_KEY, SECAGG_MODULUS, DistributedSkellam
from fl_dp.wire import ARRAYS_KEY, CONFIG_KEY, to_array_record

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


class SecAggPlusGrid:
    """The Grid the strategy runs on under ``distributed``: training messages go through SecAgg+,
    everything else (node ids, other messages) to the wrapped Grid."""

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
        workflow = SecAggPlusWorkflow(**secagg_settings(self.mechanism, len(node_ids), self.num_shares), timeout=self.timeout)
        try:
            workflow(self.grid, context)
        except Exception as err:  # noqa: BLE001 - a hostile share (wrong shape, bad bytes) must not end the run
            log.error("SecAgg+ failed: %s: %s", type(err).__name__, err)
            return SecureOutcome(None, [], [("secagg", f"{type(err).__name__}: {err}"[:300])])
        if shim.aggregate is None:
            return SecureOutcome(None, [], [("secagg", "SecAgg+ halted (too few clients answered a stage)")])
        return SecureOutcome(ring_sum_of_mean(shim.aggregate, len(shim.contributors), self.mechanism), shim.contributors)


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
    the ring values exact), the training stage reaches the app in its own layout; other messages
    pass unchanged."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if configs.get(Key.STAGE) == Stage.SETUP:
        _check_setup(configs)

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


def _check_setup(configs: ConfigRecord) -> None:
    """Refuse a SecAgg+ setup whose quantization would re-round or clip the shares."""
    target = configs.get(Key.TARGET_RANGE)
    ok = (
        isinstance(target, int)
        and configs.get(Key.CLIPPING_RANGE) == float(target // 2)
        and configs.get(Key.MAX_WEIGHT) == 1.0
        and configs.get(Key.MOD_RANGE) == SECAGG_MODULUS
    )
    if not ok:
        raise ValueError("SecAgg+ setup does not keep fl-dp's ring values exact (clipping range M/2, weight 1, modulus 2^32)")
