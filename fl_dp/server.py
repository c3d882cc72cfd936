"""The server side of a run, independent of how messages travel.

:class:`ServerCore` samples clients, broadcasts x, validates and aggregates replies (or the
secure sum of ``distributed`` DP), keeps the privacy ledger, the per-round metrics and the
checkpoints. The Flower strategy and the in-process loop are thin drivers of it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fl_dp import federated_evaluation as federated
from fl_dp import results
from fl_dp.central import CentralGaussianSum, poisson_cohort, project_to_ball
from fl_dp.checkpoint import (
    RunFiles,
    check_ledger_grows,
    check_ledger_summary,
    checkpoint_error,
    checkpoint_path,
    config_fingerprint,
    is_metrics_row,
    is_plain_tensor,
    ledger_journal_path,
    ledger_summary,
    read_checkpoint,
    rng_from_list,
    rng_to_list,
    write_checkpoint,
)
from fl_dp.client_state import check_state
from fl_dp.config import ConfigError, RunConfig
from fl_dp.data import is_schema
from fl_dp.distributed import DistributedSkellam, mechanism_for, rotation_signs
from fl_dp.mechanisms import message_norm_limit
from fl_dp.models import build_model, get_flat_params, num_params
from fl_dp.privacy import NoiseBeyondUse, PrivacyLedger, Release
from fl_dp.privacy_policy import (
    client_noise_multiplier,
    is_sample_level_private,
    local_postprocessor,
    message_bound,
    resolve_noise_multiplier,
    round_release,
)
from fl_dp.registry import build_algorithm
from fl_dp.results import progress_line
from fl_dp.robustness import robust_mean
from fl_dp.rules.base import Algorithm, State
from fl_dp.task import SERVER_STREAM, dataset_of, device_for, make_generator, model_for, partition_lookup
from fl_dp.training import Objective
from fl_dp.wire import (
    ALWAYS_REPORTED,
    CLIENT_EPSILON,
    COHORT_SIZE,
    DP_NOISE,
    DP_RATE,
    DP_STEPS,
    NON_PRIVATE_STATISTICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    PRIVACY_RECORD,
    RESUMED_FROM,
    SERVER_ROUND,
    STATE_FRESH,
    TRAIN_LOSS,
    MalformedMessage,
    NonFiniteMessage,
    Reply,
    client_text,
    decode,
    payload_bytes,
)

log = logging.getLogger("fl_dp")


def preflight(cfg: RunConfig) -> None:
    """Refuse, before any client trains, a config that validates but cannot run: data that
    cannot be loaded or split, a model that does not fit the data, an unreachable privacy target."""
    try:
        data = dataset_of(cfg)
    except (OSError, ValueError) as err:
        raise ConfigError(f"dataset {cfg.dataset!r} cannot be loaded: {err}") from None
    # a schema holds no data to split: each client brings its own, checked where it trains
    holds_data = not is_schema(cfg.dataset)
    num_train = len(data.train) if cfg.max_train_samples == 0 else min(cfg.max_train_samples, len(data.train))
    if holds_data and cfg.num_clients > num_train:
        raise ConfigError(f"num-clients {cfg.num_clients} is more than the {num_train} training samples of {cfg.dataset!r}")
    try:
        build_model(cfg.model, data.train.input_shape, data.train.num_classes, cfg.seed)
    except ValueError as err:
        raise ConfigError(f"model {cfg.model!r} does not fit dataset {cfg.dataset!r}: {err}") from None
    if holds_data:
        # the split's one-off assignment, and its first and last client: an empty one is refused here
        lookup = partition_lookup(cfg)
        for partition_id in {0, cfg.num_clients - 1}:
            try:
                lookup(partition_id)
            except ValueError as err:
                raise ConfigError(f"partitioner {cfg.partitioner!r}: {err}") from None
        sample_level_target = is_sample_level_private(cfg) and cfg.noise_multiplier == 0
        if sample_level_target or cfg.evaluation == "federated":
            sizes = [len(lookup(partition_id)) for partition_id in range(cfg.num_clients)]
        if sample_level_target:
            check_sample_level_target(cfg, sizes)
        if cfg.evaluation == "federated":
            # the smallest client first: each client splits its own when it first trains, mid-run
            smallest = min(range(cfg.num_clients), key=sizes.__getitem__)
            federated.check_held_out(sizes[smallest], cfg.held_out_fraction, smallest)
    resolve_noise_multiplier(cfg)


def check_sample_level_target(cfg: RunConfig, sizes: Sequence[int]) -> None:
    """Refuse, naming ``target-epsilon``, a DP-SGD target that the smallest or the largest client
    (``sizes``: each client's number of examples) cannot reach with useful noise. Each client
    calibrates its own sigma from its size, so every one of them would otherwise refuse to train,
    round after round, in a run that ends with an untrained model."""
    rule = build_algorithm(cfg, 1)
    for size in sorted({min(sizes), max(sizes)}):
        try:
            rule.expected_release(size)
        except NoiseBeyondUse as err:
            raise ConfigError(
                f"target-epsilon {cfg.target_epsilon:g} cannot be reached with useful noise by a {cfg.strategy} client "
                f"of {size} examples (batch-size {cfg.batch_size}, num-server-rounds {cfg.num_server_rounds}, "
                f"local-epochs {cfg.local_epochs}): {err}"
            ) from None


class ServerCore:
    """The server side of a run: global vector, algorithm state, ledger, metrics."""

    def __init__(self, cfg: RunConfig, evaluate_fn: Callable[[torch.Tensor], dict[str, float]] | None = None) -> None:
        """``evaluate_fn`` maps x to test metrics (default: the run's test split, ``test-accuracy`` and
        ``test-loss``)."""
        cfg.require_population()
        preflight(cfg)
        self.cfg = cfg
        model = model_for(cfg)
        self.dim = num_params(model)
        self.x = get_flat_params(model)
        self.noise_multiplier = resolve_noise_multiplier(cfg)
        self.client_noise_multiplier = client_noise_multiplier(cfg)
        self.algorithm: Algorithm = build_algorithm(cfg, self.dim)
        self.postprocessor = local_postprocessor(cfg, self.client_noise_multiplier)
        self.state = self.algorithm.init_server_state(self.dim)
        self.central: CentralGaussianSum | None = None
        if cfg.privacy_model == "central":
            self.central = CentralGaussianSum(bound=message_bound(cfg), noise_multiplier=self.noise_multiplier)
        self.distributed: DistributedSkellam | None = mechanism_for(cfg) if cfg.privacy_model == "distributed" else None
        self._population: list[Any] = []
        self._connected: list[Any] = []
        #: each connected client's place in the order sample() was given
        self._rank: dict[str, int] = {}
        self._partitions: dict[str, int] = {}
        self._cohort: frozenset[str] = frozenset()
        self._cohort_size = 0
        self._skip = ""
        # each client's share of the server's error-feedback state (the sum of its step * messages),
        # so that a client that lost its state can be taken out of G when it starts again
        self.client_shares: dict[str, torch.Tensor] | None = (
            {} if self.algorithm.client_state_step is not None and cfg.aggregator == "mean" and self.distributed is None else None
        )
        self.completed_rounds = 0
        self.resumed_from = 0  # the round a resumed run's checkpoint was written after (0: a fresh run)
        self._run_files: RunFiles | None = None  # this process's hold on the run's checkpoint files (resume takes it)
        self._norm_limit = self._message_norm_limit()
        self.ledger = PrivacyLedger(cfg.delta)
        self.rows: list[dict[str, Any]] = []
        self._rng = random.SystemRandom() if cfg.os_randomness else random.Random(cfg.seed)
        # federated evaluation: the clients' reports of each evaluated round, until it closes
        self._federated_metrics: dict[int, dict[str, float]] = {}
        #: round -> the clients asked to evaluate it (only they may report, once each)
        self._evaluators: dict[int, frozenset[str]] = {}
        if evaluate_fn is None and cfg.evaluation == "central":
            test = dataset_of(cfg).test
            if 0 < cfg.eval_samples < len(test):
                test = test.subset(np.arange(cfg.eval_samples))
            evaluator = Objective(model.to(device_for(cfg)), test, cfg.regularizer_lambda)

            def evaluate_fn(x: torch.Tensor) -> dict[str, float]:
                return {f"test-{k}": v for k, v in evaluator.evaluate(x).items()}

        self.evaluate_fn: Callable[[torch.Tensor], dict[str, float]] | None = evaluate_fn
        self._round_started = self._run_started = time.perf_counter()
        self._rounds_timed = 0
        self._counted_lost_replies: set[str] = set()
        self._said_small_population = False

    def expected_release(self, num_examples: int) -> Release | None:
        """What an honest client of this run releases in one round (None: nothing private)."""
        return round_release(self.algorithm, self.postprocessor, num_examples)

    def _message_norm_limit(self) -> float | None:
        """An L2 norm no honest message exceeds (except with probability 1e-9), or None if unbounded."""
        if self.postprocessor is not None:
            return self.postprocessor.norm_limit(self.dim)
        bound = self.algorithm.message_bound
        return None if bound is None else message_norm_limit(bound, 0.0, self.dim)

    # -- round: sample, broadcast

    def sample(self, client_ids: Sequence[Any]) -> list[Any]:
        """This round's cohort from the clients connected now, seeded.

        ``central``: Poisson sampling at rate q from the connected clients (possibly empty; each
        of them is charged at q this round). Otherwise ``clients-per-round`` of them without
        replacement, or all if fewer are connected. With fewer than ``min-clients-per-round``
        connected the round is skipped: no one is addressed, nothing is released or charged.

        The clients are taken in the order given, and each sum over them is added up in it: the
        in-process loop gives its clients in partition order, and the Flower strategy a
        simulation's nodes in the order they registered (partition order too), so that the same
        seed gives the same run although Flower draws new node ids every run.
        """
        self._skip = ""
        self._population = []
        self._connected = list(client_ids)
        self._rank = {str(client): rank for rank, client in enumerate(self._connected)}
        if len(client_ids) < self.cfg.min_clients_per_round:
            self._skip = f"{len(client_ids)} clients connected, min-clients-per-round is {self.cfg.min_clients_per_round}"
            self._cohort = frozenset()
            return []
        if self.central is not None or self.distributed is not None:
            self._population = list(client_ids)
            if len(client_ids) < self.cfg.num_clients and not self._said_small_population:
                self._said_small_population = True
                log.warning(
                    "%d of num-clients = %d clients are connected: Poisson cohorts at q = %.4g average %.3g clients, "
                    "not clients-per-round = %d (q stays as accounted; said once)",
                    len(client_ids),
                    self.cfg.num_clients,
                    self.cfg.client_sample_rate,
                    len(client_ids) * self.cfg.client_sample_rate,
                    self.cfg.clients_per_round,
                )
            cohort = poisson_cohort(self._population, self.cfg.client_sample_rate, self._rng)
        else:
            cohort = self._rng.sample(self._connected, min(self.cfg.clients_per_round, len(client_ids)))
        self._cohort = frozenset(str(client) for client in cohort)
        self._cohort_size = len(self._cohort)
        return cohort

    def _in_order(self, client: Any) -> tuple[int, str]:
        """A client's place in the order :meth:`sample` was given (the clients it was not given last)."""
        return self._rank.get(str(client), len(self._rank)), str(client)

    def _note_partition(self, client: str, metrics: Mapping[str, float]) -> None:
        partition = metrics.get(PARTITION_ID)
        if partition is not None and partition.is_integer() and 0 <= partition < self.cfg.num_clients:
            self._partitions[client] = int(partition)

    def client_partitions(self) -> dict[Any, int]:
        """Node id -> partition id of the clients connected at the last sampling, for replaying a
        Flower simulation in the in-process loop (:class:`fl_dp.inprocess.InProcessFederation`).

        A node's partition is the one its replies reported (diagnostic only: it never weighs in on
        aggregation or accounting); nodes that never replied get the unreported partitions in order,
        which cannot change the trajectory since they never contributed.
        """
        known = {node: self._partitions.get(str(node)) for node in self._connected}
        free = iter(sorted(set(range(self.cfg.num_clients)) - {p for p in known.values() if p is not None}))
        mapping: dict[Any, int] = {}
        for node, partition in known.items():
            partition = partition if partition is not None else next(free, None)
            if partition is not None:  # more nodes than partitions: the surplus has none
                mapping[node] = partition
        return mapping

    def broadcast(self, server_round: int, x: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and config of this round's training request, for the global vector ``x`` (Flower's
        current arrays; default: the core's own). A vector that is not the model's is refused."""
        self._round_started = time.perf_counter()
        if x is not None:
            vector = torch.from_numpy(np.array(x, dtype=np.float32).reshape(-1))
            if vector.numel() != self.dim or not torch.isfinite(vector).all():
                raise ValueError(f"the global vector must be finite with {self.dim} entries, got {vector.numel()}")
            self.x = vector
        config = {SERVER_ROUND: server_round, DP_NOISE: self.client_noise_multiplier, RESUMED_FROM: self.resumed_from}
        if self.distributed is not None:
            # each share's noise is V / n: the sum carries V whoever of the population took part
            config[COHORT_SIZE] = self._cohort_size
        return {"x": self.x.numpy().copy()}, config

    # -- round: aggregate

    def aggregate(self, server_round: int, replies: list[Reply], failures: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """Validate replies, update x from the accepted ones, account privacy, record metrics.

        A reply is accepted only from a client addressed this round, once, with exactly the
        layout, dtypes and metric types this strategy's clients send, a privacy record equal to
        the run's mechanism, and a message inside the algorithm's norm bound. Anything else is
        rejected with its reason; no reply can raise out of here. The ledger charges what the
        server knows the mechanism to be, for every addressed client that replied, rejected or not.
        """
        accepted: list[tuple[Reply, torch.Tensor]] = []
        rejected = [rejection(client, reason) for client, reason in failures]
        non_finite = answered = 0
        support = self.algorithm.message_support(server_round, self.dim)
        for client, reply in first_replies(
            replies, self._cohort, rejected, "not addressed this round", "a second reply this round"
        ):
            answered += 1
            if self.central is None:
                expected = self._charge(client, reply.metrics)
            try:
                if reply.error:
                    raise MalformedMessage(reply.error)
                metrics = _checked_metrics(reply.metrics, self.cfg.is_private)
                if self.central is None:
                    _check_privacy_record(metrics, expected)
                vector = decode(reply.arrays, self.dim, self.algorithm.wire_layouts)
                if self._norm_limit is not None and float(torch.linalg.vector_norm(vector)) > self._norm_limit:
                    raise MalformedMessage(f"message norm above the algorithm's bound {self._norm_limit:.4g}")
                if support is not None and bool(vector[~support].any()):
                    raise MalformedMessage("message changes coordinates outside the round's sparsification masks")
            except (MalformedMessage, ValueError, TypeError, OverflowError) as err:
                rejected.append(rejection(client, err))
                non_finite += isinstance(err, NonFiniteMessage)
                continue
            self._note_partition(client, metrics)
            accepted.append((Reply(client, reply.arrays, metrics), vector))
        # the sum in one order whatever order the replies arrived in (floating-point addition)
        accepted.sort(key=lambda item: self._in_order(item[0].client_id))
        for reason in rejected:
            log.warning("round %d: rejected reply from %s", server_round, reason)
        if answered and non_finite == answered:
            log.error(
                "round %d: every reply holds NaN or Inf (its message or its loss): the global model has likely "
                "diverged (its norm is %.3g); a smaller server-lr (now %g) may help",
                server_round,
                float(torch.linalg.vector_norm(self.x)),
                self.cfg.server_lr,
            )
        if self.central is not None:
            self.ledger.record_many(self._population, self.central.release(self.cfg.client_sample_rate))
        self._cohort = frozenset()  # a late reply of this round is not addressed by the next one

        skipped = self._skip
        if not skipped and self.central is None and len(accepted) < self.cfg.min_clients_per_round:
            skipped = f"{len(accepted)} replies accepted, min-clients-per-round is {self.cfg.min_clients_per_round}"
        # under central DP the noised sum is released every round a cohort was drawn, even an empty
        # one, whoever replied: skipping on the replies would reveal who was sampled
        if skipped:
            log.warning("round %d skipped: %s", server_round, skipped)
        if (not skipped or (accepted and self.client_shares is not None)) and (accepted or self.central is not None):
            messages = [vector for _, vector in accepted]
            candidate_state = {k: v.clone() for k, v in self.state.items()}
            fresh = self._forget_lost_states(candidate_state, accepted)
            if self.central is not None:
                noisy_sum = self.central(messages, self.dim, make_generator(self.cfg, SERVER_STREAM, server_round))
                # the expected cohort q * num-clients, not the realised one, divides where a rule averages
                candidate = self.algorithm.apply_sum(self.x, candidate_state, noisy_sum, float(self.cfg.clients_per_round))
            elif self.cfg.aggregator != "mean":
                # a robust mean stands in for the mean the rule takes (example counts are not used)
                combined = robust_mean(messages, self.cfg.aggregator, self.cfg.trim_fraction) * len(messages)
                candidate = self.algorithm.apply_sum(self.x, candidate_state, combined, float(len(messages)))
            else:
                weights = (
                    capped_weights([r.metrics[NUM_EXAMPLES] for r, _ in accepted])
                    if self.algorithm.weighted_by_examples
                    else [1.0] * len(accepted)
                )
                candidate = self.algorithm.server_update(self.x, candidate_state, messages, weights)
            if skipped:
                # the repliers' own states moved: the server's mirror of them must too, the model not
                candidate = self.x
            if self._commit(server_round, candidate, candidate_state, rejected):
                self._record_shares(accepted, fresh)
        self._warn_on_ledger_disagreement(server_round, [r for r, _ in accepted])
        accepted_replies = [r for r, _ in accepted]
        return self._close_round(
            server_round,
            accepted_replies,
            num_sent=len(replies) + len(failures),
            rejected=rejected,
            skipped=skipped,
            bytes_up=sum(payload_bytes(r.arrays) for r in accepted_replies),
        )

    def aggregate_secure(
        self, server_round: int, total: np.ndarray | None, contributors: list[Any], failures: Sequence[tuple[str, str]] = ()
    ) -> dict[str, Any]:
        """Update x from what secure aggregation revealed: the ring sum of the ``contributors``' shares.

        No client's message reaches this method, only their sum mod M. Every client of the population
        is charged the round's Skellam release (as under ``central``); the round is skipped, model
        kept, when fewer shares than the noise was calibrated for survived, when the sum includes a
        client not addressed this round, or when it is not a ring vector. The decoded sum is projected
        onto the ball that holds the noised sum of that many honest messages except with probability
        1e-9: a client cannot move the model further than that, whatever share it sent.
        """
        mechanism = self.distributed
        if mechanism is None:
            raise RuntimeError("aggregate_secure is the distributed privacy model's aggregation")
        rejected = [rejection(client, reason) for client, reason in failures]
        ids = [str(client) for client in contributors]
        skipped = self._skip
        if not skipped and (len(set(ids)) != len(ids) or not set(ids) <= self._cohort):
            skipped = "secure sum names clients not addressed this round, or one twice: discarded"
        self.ledger.record_many(self._population, mechanism.release(self.cfg.client_sample_rate))
        self._cohort = frozenset()
        cohort, self._cohort_size = self._cohort_size, 0
        needed = mechanism.min_survivors(max(cohort, 1))
        if not skipped and len(ids) < needed:
            skipped = f"{len(ids)} shares survived, the noise needs {needed} of the {cohort} (secagg-survivors)"
        if not skipped and total is None:
            skipped = "secure aggregation revealed no sum"
        noisy_sum = None
        if not skipped:
            try:
                assert total is not None  # a missing sum skipped the round above
                if total.shape != (mechanism.padded,) or total.dtype != np.int64:
                    raise ValueError(f"a ring sum is {mechanism.padded} int64 values")
                # the dropped shares' noise, so that the released sum's variance does not depend on who took part
                topped_up = np.mod(total + mechanism.top_up(cohort, len(ids), self._top_up_rng(server_round)), mechanism.modulus)
                noisy_sum = mechanism.decode(topped_up, rotation_signs(self.cfg.seed, server_round, mechanism.padded))
            except ValueError as err:
                skipped = f"secure sum: {err}"
        if skipped:
            log.warning("round %d skipped: %s", server_round, skipped)
        if noisy_sum is not None:
            noisy_sum = project_to_ball(noisy_sum, mechanism.sum_norm_limit(len(ids)))
            candidate_state = {k: v.clone() for k, v in self.state.items()}
            candidate = self.algorithm.apply_sum(self.x, candidate_state, noisy_sum, float(self.cfg.clients_per_round))
            self._commit(server_round, candidate, candidate_state, rejected)
        contributed = [] if skipped else [Reply(client, {}, {}) for client in ids]
        return self._close_round(
            server_round,
            contributed,
            num_sent=len(ids) + len(failures),
            rejected=rejected,
            skipped=skipped,
            bytes_up=len(ids) * mechanism.share_bytes,
        )

    def _top_up_rng(self, server_round: int) -> np.random.Generator:
        entropy = None if self.cfg.os_randomness else [self.cfg.seed, server_round, SERVER_STREAM, 0x70F]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def _commit(self, server_round: int, candidate: torch.Tensor, candidate_state: State, rejected: list[str]) -> bool:
        """Adopt the round's model and state if they are finite; else keep both and say why."""
        if torch.isfinite(candidate).all() and all(torch.isfinite(v).all() for v in candidate_state.values()):
            self.x, self.state = candidate, candidate_state
            return True
        rejected.append("aggregate: update not finite, global model kept")
        log.error("round %d: aggregated update is not finite; global model kept", server_round)
        return False

    def _close_round(
        self, server_round: int, accepted: list[Reply], num_sent: int, rejected: list[str], skipped: str, bytes_up: int
    ) -> dict[str, Any]:
        """The round's metrics row (its evaluation follows in :meth:`evaluate_round`) and the ledger journal."""
        summary = ledger_summary(self.ledger)
        eps_max, eps_mean = summary[:2]
        row: dict[str, Any] = {
            "round": server_round,
            "strategy": self.cfg.strategy,
            "privacy-model": self.cfg.privacy_model,
            "sampled": num_sent,
            "accepted": len(accepted),
            "rejected": len(rejected),
            "train-loss": _mean_metric(accepted, TRAIN_LOSS),
            "epsilon-max": eps_max,
            "epsilon-mean": eps_mean,
            "client-epsilon-max": _max_metric(accepted, CLIENT_EPSILON),
            "noise-multiplier": self.noise_multiplier,
            "bytes-up": bytes_up,
            "bytes-up-dense": len(accepted) * self.dim * 4,
            "bytes-down": num_sent * self.dim * 4,
            "round-seconds": time.perf_counter() - self._round_started,
            "skipped": skipped,
            "rejections": "; ".join(rejected),
        }
        self.rows.append(row)
        self.completed_rounds = server_round
        if self.cfg.checkpoint_every > 0:
            # every round, not only at checkpoints: a resumed run must not forget what was released since
            write_checkpoint(
                ledger_journal_path(self.cfg),
                {
                    "config": config_fingerprint(self.cfg),
                    "round": server_round,
                    "ledger": self.ledger.state_dict(),
                    "summary": summary,
                },
            )
        elif server_round >= self.cfg.num_server_rounds:
            self._release_run_files()  # a resumed run that writes no checkpoint: its last round is its last read
        log.debug(
            "round %d/%d: %s", server_round, self.cfg.num_server_rounds, ", ".join(f"{k}={_fmt(v)}" for k, v in row.items())
        )
        return row

    def evaluation_due(self, server_round: int) -> bool:
        return server_round % self.cfg.eval_every == 0 or server_round == self.cfg.num_server_rounds

    def evaluate_round(self, server_round: int, x: np.ndarray | None = None) -> dict[str, float]:
        """Close round ``server_round``: its test metrics where due (of ``x``, Flower's arrays, or the
        core's x), added to its row, and its progress line. Returns the test metrics ({} if not due)."""
        metrics: dict[str, float] = {}
        if self.evaluation_due(server_round):
            if self.evaluate_fn is None:  # federated: what the clients reported
                metrics = self._federated_metrics.pop(server_round, {})
            else:
                vector = self.x if x is None else torch.from_numpy(np.array(x, dtype=np.float32).reshape(-1))
                metrics = {k: float(v) for k, v in self.evaluate_fn(vector).items()}
        row = self._row_of(server_round)
        if row is None:
            return metrics
        row.update(metrics)
        self._rounds_timed += 1
        elapsed = time.perf_counter() - self._run_started
        eta = elapsed / self._rounds_timed * (self.cfg.num_server_rounds - server_round)
        log.info("%s", progress_line(row, self.cfg.num_server_rounds, eta))
        return metrics

    def _row_of(self, server_round: int) -> dict[str, Any] | None:
        """The metrics row of ``server_round`` if it is the last one closed (a skipped round has none)."""
        return self.rows[-1] if self.rows and self.rows[-1]["round"] == server_round else None

    # -- federated evaluation

    def federated_evaluation_due(self, server_round: int) -> bool:
        return self.cfg.evaluation == "federated" and self.evaluation_due(server_round)

    def evaluation_cohort(self, nodes: Sequence[Any], server_round: int) -> list[Any]:
        """The clients asked to test the model after ``server_round`` (none under central
        evaluation or where no evaluation is due)."""
        if not self.federated_evaluation_due(server_round):
            return []
        cfg = self.cfg
        cohort = federated.evaluation_cohort(nodes, cfg.evaluation_clients, cfg.seed, server_round, cfg.os_randomness)
        self._evaluators = {server_round: frozenset(str(node) for node in cohort)}
        return cohort

    def aggregate_evaluation(
        self, server_round: int, replies: Sequence[Reply], failures: Sequence[tuple[str, str]] = ()
    ) -> dict[str, float]:
        """Combine the clients' evaluation reports of ``server_round`` (:mod:`fl_dp.federated_evaluation`);
        they become the round's test metrics when it closes (:meth:`evaluate_round`). Returns them.
        Only a client asked to evaluate the round may report it, once: a client that reports twice,
        or unasked, would weigh its own numbers more."""
        reports, rejected = [], [rejection(client, reason) for client, reason in failures]
        asked = self._evaluators.get(server_round, frozenset())
        in_order = sorted(replies, key=lambda r: self._in_order(r.client_id))
        unasked, again = f"evaluation: not asked to evaluate round {server_round}", "evaluation: a second report this round"
        for _, reply in first_replies(in_order, asked, rejected, unasked, again):
            try:
                if reply.error:
                    raise MalformedMessage(reply.error)
                reports.append(federated.check_report(reply.metrics))
            except MalformedMessage as err:
                rejected.append(rejection(reply.client_id, f"evaluation: {err}"))
        for reason in rejected:
            log.warning("round %d: evaluation report rejected: %s", server_round, reason)
        if not reports:
            log.warning("round %d: no client reported its evaluation", server_round)
        metrics = {
            **federated.combine(reports),
            federated.EVALUATED_CLIENTS: float(len(reports)),
            federated.EVALUATION_REJECTED: float(len(rejected)),
        }
        self._federated_metrics[server_round] = metrics
        row = self._row_of(server_round)
        if row is not None and rejected:
            row["rejections"] = "; ".join([r for r in (row["rejections"],) if r] + rejected)
        return metrics

    def _forget_lost_states(self, state: State, accepted: list[tuple[Reply, torch.Tensor]]) -> set[str]:
        """Take out of the server's state the share of every client that reports it started from an
        empty state although it has contributed before (its state was lost): G stays the mean of
        the clients' states. Returns the clients that started empty."""
        fresh = {str(r.client_id) for r, _ in accepted if r.metrics.get(STATE_FRESH) == 1.0}
        if self.client_shares is None:
            return fresh
        for client in sorted(fresh & set(self.client_shares), key=self._in_order):
            log.warning("client %s lost its error-feedback state: its share is taken out of the server's state", client)
            self.algorithm.forget_client_share(state, self.client_shares[client])
        return fresh

    def _record_shares(self, accepted: list[tuple[Reply, torch.Tensor]], fresh: set[str]) -> None:
        if self.client_shares is None:
            return
        step = self.algorithm.client_state_step
        assert step is not None
        for reply, vector in accepted:
            client = str(reply.client_id)
            base = None if client in fresh else self.client_shares.get(client)
            self.client_shares[client] = step * vector if base is None else base + step * vector

    def _charge(self, client: str, metrics: Any) -> Release | None:
        """Charge ``client`` the run's release under ``local``, whatever its reply says or lacks.

        Charged before any check: a reply rejected afterwards has still been released. Only
        DP-SGD's release depends on the client (its sample rate B / N); where the count cannot
        be read, the charge is epsilon = inf, the one charge that is never below the truth.
        """
        try:
            num_examples: int | None = int(min(max(float(metrics[NUM_EXAMPLES]), 1.0), MAX_NUM_EXAMPLES))
        except (KeyError, TypeError, ValueError, OverflowError):
            num_examples = None
        if num_examples is None and self.algorithm.release_depends_on_data_size:
            self.ledger.record(client, Release(0.0))
            return None
        expected = self.expected_release(num_examples or 1)
        charge = expected if expected is not None else Release(0.0)
        self.ledger.record(client, charge)
        return expected

    def _warn_on_ledger_disagreement(self, server_round: int, replies: list[Reply]) -> None:
        """Compare each reply's own epsilon with the server's ledger for its client.

        Below the ledger is a warning: the client's own ledger misses releases the server received
        (a lost state-dir, or a false record). Above it is expected after a crash: a client charges
        itself before its reply leaves, so a reply lost with its node is counted by the client
        only; said once per client, at info level, since the gap stays for the rest of the run.
        """
        for reply in replies:
            claimed = reply.metrics.get(CLIENT_EPSILON)
            if claimed is None:
                continue
            client = str(reply.client_id)
            booked = self.ledger.epsilon(client)
            if math.isclose(claimed, booked, rel_tol=1e-6) or claimed == booked:
                continue
            if claimed < booked:
                log.warning(
                    "round %d: client %s reports epsilon %.6g, below the server's ledger %.6g for it: "
                    "its own ledger misses releases the server received",
                    server_round,
                    client,
                    claimed,
                    booked,
                )
            elif client not in self._counted_lost_replies:
                self._counted_lost_replies.add(client)
                log.info(
                    "round %d: client %s counts epsilon %.6g, the server's ledger %.6g: it charged itself "
                    "for replies that never reached the server (lost in a crash or a timeout)",
                    server_round,
                    client,
                    claimed,
                    booked,
                )

    # -- checkpoints

    def checkpoint_due(self, server_round: int) -> bool:
        every = self.cfg.checkpoint_every
        return every > 0 and (server_round % every == 0 or server_round == self.cfg.num_server_rounds)

    def write_checkpoint(self, clients: Mapping[str, State] | None = None) -> Path:
        """Everything the rounds so far determined, to ``results-dir/<run>/checkpoint`` (atomic)."""
        path = checkpoint_path(self.cfg)
        write_checkpoint(
            path,
            {
                "config": config_fingerprint(self.cfg),
                "round": self.completed_rounds,
                "x": self.x.clone(),
                "state": {k: v.clone() for k, v in self.state.items()},
                "ledger": self.ledger.state_dict(),
                "summary": ledger_summary(self.ledger),
                "rng": None if isinstance(self._rng, random.SystemRandom) else rng_to_list(self._rng.getstate()),
                "rows": [dict(row) for row in self.rows],
                "shares": None if self.client_shares is None else dict(self.client_shares),
                "clients": {cid: dict(state) for cid, state in (clients or {}).items() if state},
            },
        )
        log.info("round %d: checkpoint written to %s", self.completed_rounds, path)
        if self.completed_rounds >= self.cfg.num_server_rounds:
            self._release_run_files()  # the run's last write: another server may resume or rerun it now
        return path

    def _release_run_files(self) -> None:
        if self._run_files is not None:
            self._run_files.release()
            self._run_files = None

    def resume(self, client_ids_are_stable: bool = False) -> dict[str, State]:
        """With ``resume``, restore the run's checkpoint (if there is one); returns the in-process
        clients' states it holds. Every field is checked before any is used. Unless client ids are
        stable (the in-process loop's are; Flower node ids change with a SuperNode's key or a new
        SuperLink), a client id the checkpoint does not know starts with its worst history."""
        path = checkpoint_path(self.cfg)
        if (self.cfg.checkpoint_every > 0 or self.cfg.resume) and self._run_files is None:
            # before any file of the run is read or removed; a resumed run that writes none still
            # releases on what another server of the run is releasing, and its journal would not say so
            self._run_files = RunFiles(self.cfg)
        if not self.cfg.resume:
            if self.cfg.checkpoint_every > 0:  # a fresh run: an earlier run's files are not its own
                path.unlink(missing_ok=True)
                ledger_journal_path(self.cfg).unlink(missing_ok=True)
            return {}
        if not path.exists():
            log.info("resume: no checkpoint at %s, starting at round 1", path)
            return {}
        payload = read_checkpoint(path, self.cfg)

        def fail(reason: str) -> ConfigError:
            return checkpoint_error(path, reason)

        x, state, rows, clients = payload.get("x"), payload.get("state"), payload.get("rows"), payload.get("clients")
        if not is_plain_tensor(x, self.x.dtype, tuple(self.x.shape)):
            raise fail(f"x is not a finite float32 vector of {self.dim} entries")
        if not (
            isinstance(state, dict)
            and set(state) == set(self.state)
            and all(is_plain_tensor(state[k], v.dtype, tuple(v.shape)) for k, v in self.state.items())
        ):
            raise fail("the algorithm's server state does not match this strategy's")
        if not (
            isinstance(rows, list) and len(rows) == payload["round"] and all(is_metrics_row(r, i + 1) for i, r in enumerate(rows))
        ):
            raise fail("metrics rows do not match its round")
        if not isinstance(clients, dict) or not all(isinstance(cid, str) for cid in clients):
            raise fail("client states are not keyed by client id")
        for cid, client_state in clients.items():
            try:
                check_state(client_state, self.dim)
            except ValueError as err:
                raise fail(f"state of {cid}: {err}") from None
        shares = payload.get("shares")
        if self.client_shares is None:
            if shares is not None:
                raise fail("holds client shares this strategy does not keep")
        elif not (
            isinstance(shares, dict)
            and all(isinstance(k, str) and is_plain_tensor(v, self.x.dtype, tuple(self.x.shape)) for k, v in shares.items())
        ):
            raise fail("client shares are not finite vectors of the model's size")
        try:
            ledger = self._restored_ledger(payload.get("ledger"))
            check_ledger_summary(ledger, payload.get("summary"), "its epsilon summary")
            if rows:
                check_ledger_summary(ledger, [rows[-1].get("epsilon-max"), rows[-1].get("epsilon-mean")], "its last metrics row")
            rng_state = None if payload.get("rng") is None else rng_from_list(payload["rng"])
        except (ValueError, TypeError, AttributeError) as err:
            raise fail(str(err)) from None
        journal = ledger_journal_path(self.cfg)
        if journal.exists():
            # releases after the checkpoint happened too: a replayed round is charged again (with
            # os-randomness it is a new release; seeded, the same noise again: docs/faults.md)
            later = read_checkpoint(journal, self.cfg)
            if later["round"] >= payload["round"]:
                try:
                    journal_ledger = self._restored_ledger(later.get("ledger"))
                    check_ledger_summary(journal_ledger, later.get("summary"), "its epsilon summary")
                    check_ledger_grows(journal_ledger, ledger)
                except (ValueError, TypeError, AttributeError) as err:
                    raise checkpoint_error(journal, str(err)) from None
                ledger = journal_ledger
        if rng_state is not None and not isinstance(self._rng, random.SystemRandom):
            self._rng.setstate(rng_state)  # checked by rng_from_list: it cannot fail here
        self.x, self.state, self.ledger, self.rows = x, state, ledger, rows
        if self.client_shares is not None:
            self.client_shares = dict(shares)  # type: ignore[arg-type]
        if not client_ids_are_stable:
            self.ledger.inherit_worst_history()
        self.completed_rounds = self.resumed_from = payload["round"]
        log.info("resume: continuing after round %d from %s", self.completed_rounds, path)
        return clients

    def _restored_ledger(self, rows: Any) -> PrivacyLedger:
        """A checkpointed ledger, every release checked (ValueError naming what is wrong)."""
        if not isinstance(rows, dict):
            raise ValueError("ledger: not a map of client ids to releases")
        ledger = PrivacyLedger(self.cfg.delta)
        ledger.load_state_dict(rows)
        self._check_ledger_mechanisms(ledger)
        return ledger

    def _check_ledger_mechanisms(self, ledger: PrivacyLedger) -> None:
        """Every booked release must be this run's mechanism (or the epsilon = inf charge): a
        checkpoint cannot book a client at a noise multiplier the run never used. (DP-SGD's
        mechanism depends on each client's data size, which the server learns only from replies.)"""
        if self.algorithm.release_depends_on_data_size:
            return
        release = self.expected_release(1)
        allowed = {0.0, self.noise_multiplier, self.client_noise_multiplier}
        if release is not None:
            allowed.add(release.noise_multiplier)
        for client, history in ledger.state_dict().items():
            for noise, *_ in history:
                if not any(math.isclose(noise, a, rel_tol=1e-9) for a in allowed):
                    raise ValueError(f"ledger: {client} is booked at noise multiplier {noise:.6g}, not this run's mechanism")

    def history(self) -> pd.DataFrame:
        return results.typed(pd.DataFrame(self.rows))

    def results_path(self) -> Path:
        """Where the run's CSV goes: results-dir/run-name.csv (the PNG beside it)."""
        return Path(self.cfg.results_dir) / f"{self.cfg.label}.csv"

    def save(self, path: str | Path | None = None, history: pd.DataFrame | None = None) -> Path:
        """Write the per-round metrics (``history``, default this core's rows) as CSV and their plot
        as PNG beside it (default: results-dir/run-name.csv); returns the CSV's path."""
        csv_path, _ = results.save(self.history() if history is None else history, path or self.results_path())
        return csv_path


MAX_NUM_EXAMPLES = 10**9


def _checked_metrics(metrics: Any, private_run: bool) -> dict[str, float]:
    """The reply's metrics as plain floats, or :class:`MalformedMessage` for anything an honest
    client of this run would not send (unknown keys, wrong types, non-finite values)."""
    if not isinstance(metrics, Mapping):
        raise MalformedMessage("reply metrics are not a mapping")
    allowed = ALWAYS_REPORTED | PRIVACY_RECORD | (frozenset() if private_run else NON_PRIVATE_STATISTICS)
    unknown = set(metrics) - allowed
    if unknown:
        raise MalformedMessage(f"unexpected metrics {sorted(map(str, unknown))}")
    if NUM_EXAMPLES not in metrics:
        raise MalformedMessage(f"reply metrics lack {NUM_EXAMPLES!r}")
    checked: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise MalformedMessage(f"metric {key!r} must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value) and not (key == CLIENT_EPSILON and value == math.inf):
            raise NonFiniteMessage(f"metric {key!r} is {value}")
        checked[key] = value
    num_examples = checked[NUM_EXAMPLES]
    if not (1 <= num_examples <= MAX_NUM_EXAMPLES and num_examples.is_integer()):
        raise MalformedMessage(f"num-examples must be an integer in [1, {MAX_NUM_EXAMPLES}], got {num_examples}")
    if STATE_FRESH in checked and checked[STATE_FRESH] != 1.0:
        raise MalformedMessage(f"{STATE_FRESH} is 1 when sent, got {checked[STATE_FRESH]}")
    if DP_STEPS in checked and not checked[DP_STEPS].is_integer():
        raise MalformedMessage(f"dp-steps must be an integer, got {checked[DP_STEPS]}")
    return checked


def _check_privacy_record(metrics: dict[str, float], expected: Release | None) -> None:
    """A client's own record of its release must be the run's mechanism, exactly."""
    claimed = [metrics.get(key) for key in (DP_NOISE, DP_RATE, DP_STEPS)]
    if expected is None:
        if any(value is not None for value in claimed):
            raise MalformedMessage("a privacy record in a run whose clients release nothing private")
        return
    wanted = (expected.noise_multiplier, expected.sample_rate, float(expected.steps))
    if any(value is None for value in claimed):
        raise MalformedMessage("reply lacks its privacy record")
    if not all(math.isclose(c, w, rel_tol=1e-9) for c, w in zip(claimed, wanted)):  # type: ignore[arg-type]
        raise MalformedMessage(f"privacy record {tuple(claimed)} is not the run's mechanism {wanted}")


def rejection(client: Any, reason: object) -> str:
    """``client: reason`` for the log and the round's ``rejections`` (the reason may quote the
    client's own text, so it is bounded and escaped: :func:`fl_dp.wire.client_text`)."""
    return f"{client_text(client, 40)}: {client_text(reason)}"


def first_replies(
    replies: Iterable[Reply], allowed: Collection[str], rejected: list[str], unasked: str, again: str
) -> Iterator[tuple[str, Reply]]:
    """(client, reply) for the first reply of each client in ``allowed``; any other reply is added to
    ``rejected`` with its reason (``unasked`` or ``again``): no client answers for another or twice."""
    seen: set[str] = set()
    for reply in replies:
        client = str(reply.client_id)
        if client not in allowed:
            rejected.append(rejection(client, unasked))
        elif client in seen:
            rejected.append(rejection(client, again))
        else:
            seen.add(client)
            yield client, reply


#: FedAvg weights are capped at this multiple of the round's median reported example count
WEIGHT_CAP_OVER_MEDIAN = 2.0


def capped_weights(num_examples: list[float]) -> list[float]:
    """Example counts as FedAvg weights, each capped at twice the round's median, so that a client
    claiming a huge count gets at most about 2 / (n + 1) of the weight of n replies."""
    cap = WEIGHT_CAP_OVER_MEDIAN * float(np.median(num_examples))
    return [min(float(n), cap) for n in num_examples]


def _reported(replies: list[Reply], key: str) -> list[float]:
    """The values of ``key`` from the replies that report it (private clients report no loss)."""
    return [r.metrics[key] for r in replies if key in r.metrics]


def _mean_metric(replies: list[Reply], key: str) -> float:
    values = _reported(replies, key)
    return float(np.mean(values)) if values else math.nan


def _max_metric(replies: list[Reply], key: str) -> float:
    values = _reported(replies, key)
    return float(max(values)) if values else math.nan


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
