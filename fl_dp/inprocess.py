"""Clients and server in one process, exchanging the same wire arrays as Flower does.

Tests, benchmarks, audits and notebooks run here; the Flower path gives the same trajectory
for the same seed (tests/test_flower_path.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from fl_dp.client import ClientCore
from fl_dp.config import ConfigError, RunConfig
from fl_dp.distributed import DistributedSkellam, check_share, ring_sum
from fl_dp.rules.base import State
from fl_dp.server import ServerCore
from fl_dp.wire import Reply


class LazyClients(Mapping[Any, ClientCore]):
    """``client-i`` -> its ClientCore, built on first use: a population of 10,000 holds only
    the clients that were ever sampled (their data subsets and algorithms), not all of them.

    ``partitions`` (client id -> partition id, e.g. a Flower simulation's node ids from
    :meth:`ServerCore.client_partitions`) names the clients as that run did, so that the
    server samples the same cohorts.
    """

    def __init__(self, cfg: RunConfig, partitions: Mapping[Any, int] | None = None) -> None:
        self.cfg = cfg
        if partitions is None:
            partitions = {f"client-{i}": i for i in range(cfg.num_clients)}
        elif (
            not all(isinstance(pid, (int, np.integer)) and not isinstance(pid, bool) for pid in partitions.values())
            or sorted(partitions.values()) != list(range(cfg.num_clients))
            or len({str(cid) for cid in partitions}) != len(partitions)  # the server knows a client by str(id)
        ):
            raise ConfigError(
                f"client partitions must map {cfg.num_clients} clients, distinct as text, one to one onto the "
                f"partition ids 0..{cfg.num_clients - 1} of num-clients"
            )
        self._ids = list(partitions)
        self._index = dict(partitions)
        self._built: dict[Any, ClientCore] = {}

    def __getitem__(self, cid: Any) -> ClientCore:
        if cid not in self._built:
            self._built[cid] = ClientCore(self.cfg, self._index[cid])
        return self._built[cid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def num_built(self) -> int:
        return len(self._built)


@dataclass
class InProcessFederation:
    """Clients and server in one process, exchanging the same wire arrays as Flower does."""

    cfg: RunConfig
    evaluate_fn: Callable[[torch.Tensor], dict[str, float]] | None = None
    #: client id -> partition id (default ``client-i`` -> i); see :class:`LazyClients`
    partitions: Mapping[Any, int] | None = None
    server: ServerCore = field(init=False)
    clients: LazyClients = field(init=False)
    states: dict[Any, State] = field(init=False)

    def __post_init__(self) -> None:
        self.server = ServerCore(self.cfg, self.evaluate_fn)
        self.clients = LazyClients(self.cfg, self.partitions)
        self.states = {cid: {} for cid in self.clients}
        restored = self.server.resume(client_ids_are_stable=True)
        unknown = set(restored) - {str(cid) for cid in self.states}
        if unknown:
            raise ConfigError(f"resume: checkpoint holds states of clients this run does not have: {sorted(unknown)[:3]}")
        self.states.update({cid: restored[str(cid)] for cid in self.clients if str(cid) in restored})

    def train_cohort(self, server_round: int) -> tuple[dict[str, np.ndarray], dict[str, Any], list[Reply], list[tuple[str, str]]]:
        """Broadcast round ``server_round`` and let its sampled clients train: (arrays, config,
        replies, failures). A client that raises sends no reply and keeps its state, as a Flower
        ClientApp that raises does; its failure is ``(client, reason)``. A configuration error is
        the operator's, and ends the run."""
        cohort = self.server.sample(list(self.clients))
        arrays, config = self.server.broadcast(server_round)
        replies, failures = [], []
        for cid in cohort:
            try:
                out_arrays, metrics, self.states[cid] = self.clients[cid].train(arrays, config, self.states[cid])
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001 - one client's failure never ends the run
                failures.append((str(cid), f"client error: {type(err).__name__}: {err}"))
                continue
            replies.append(Reply(cid, out_arrays, metrics))
        return arrays, config, replies, failures

    def run_round(self, server_round: int) -> dict[str, Any]:
        """One round: train the cohort, aggregate, evaluate where due; returns the round's row.
        Rounds run once each, in order: a repeated round number would draw its seeded noise again
        on other messages, and a round skipped or run twice would be missing or doubled in the table."""
        expected = self.server.completed_rounds + 1
        if isinstance(server_round, bool) or not isinstance(server_round, (int, np.integer)) or server_round != expected:
            raise ValueError(f"round {server_round!r} cannot run now: the next round is {expected}")
        _, _, replies, failures = self.train_cohort(server_round)
        if self.server.distributed is None:
            row = self.server.aggregate(server_round, replies, failures)
        else:
            total, contributors, unreadable = simulated_secure_sum(replies, self.server.distributed)
            row = self.server.aggregate_secure(server_round, total, contributors, failures + unreadable)
        self.evaluate_cohort(server_round)
        self.server.evaluate_round(server_round)
        if self.server.checkpoint_due(server_round):
            self.server.write_checkpoint(self.states)
        return row

    def evaluate_cohort(self, server_round: int) -> None:
        """Federated evaluation: the round's evaluation cohort tests the new global vector on their held-out data."""
        cohort = self.server.evaluation_cohort(list(self.clients), server_round)
        if not cohort:
            return
        arrays = {"x": self.server.x.numpy()}
        replies = [Reply(cid, {}, self.clients[cid].evaluate(arrays)) for cid in cohort]
        self.server.aggregate_evaluation(server_round, replies)

    def run(self, stop_after: int | None = None) -> pd.DataFrame:
        """Rounds after the last completed one (all of them, or up to ``stop_after``)."""
        last = self.cfg.num_server_rounds if stop_after is None else min(stop_after, self.cfg.num_server_rounds)
        for server_round in range(self.server.completed_rounds + 1, last + 1):
            self.run_round(server_round)
        return self.server.history()


def simulated_secure_sum(
    replies: list[Reply], mechanism: DistributedSkellam
) -> tuple[np.ndarray | None, list[str], list[tuple[str, str]]]:
    """What secure aggregation gives the server, without the cryptography: the ring sum of the
    shares, who contributed, and the clients whose share the protocol could not add (wrong shape)."""
    shares, contributors, failures = [], [], []
    for reply in replies:
        try:
            shares.append(check_share(reply.arrays, mechanism))
            contributors.append(str(reply.client_id))
        except ValueError as err:
            failures.append((str(reply.client_id), str(err)))
    return (ring_sum(shares, mechanism.modulus) if shares else None), contributors, failures


def run_inprocess(
    cfg: RunConfig,
    evaluate_fn: Callable[[torch.Tensor], dict[str, float]] | None = None,
    partitions: Mapping[Any, int] | None = None,
) -> pd.DataFrame:
    """Run ``cfg`` without Flower or Ray; returns the per-round metrics: a simulation's run with the
    same seed (the strategy orders its nodes as this loop does, by partition). ``partitions``: the
    clients' ids as a Flower run named them (``run.core.client_partitions()``), to replay a run
    whose nodes came in another order (a deployment's)."""
    return InProcessFederation(cfg, evaluate_fn, partitions).run()
