"""Empirical privacy audits: canaries in a run exactly as a user runs it, scored against the ledger.

Client-level (every client-level private strategy, ``local`` and ``central``): m canary clients,
each a gradient canary whose gradient (and local-training step) is a fixed unit direction u_i
(a coordinate axis of its own: :func:`canary_directions`) times a magnitude far beyond any clip
or normalisation, so that its message is the largest the mechanism lets through, along u_i.
A fair coin per canary decides its membership:

- ``local`` (neighbours replace one client's data, sensitivity 2S): a member's gradient is +u_i, a
  non-member's -u_i. Canaries take part in every round. The auditor sees each canary's own noisy
  messages (what the server sees) and scores sum_t <message_t, u_i>.
- ``central`` (neighbours add or remove one client): members join the population the server
  Poisson-samples from, non-members do not. The auditor sees the server's noised sum of every
  round and, as DP allows the adversary, every other client's message; from y_t = <noised sum_t -
  others_t, u_i> / S it scores sum_t log(1 - q + q exp((y_t - 1/2) / sigma^2)), the likelihood
  ratio of one Poisson-sampled Gaussian release.

Sample-level (``dp-sgd``, ``dp-sgd-rs``): m gradient-canary samples, each in one client's data by a
fair coin, scored by -<sum of that client's updates, u_i>.

Scores and coins go to :func:`fl_dp.audit_bounds.best_one_run_bound`. The ledger's epsilon is the
server's, for the canaries themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fl_dp.audit_bounds import OneRunBound, best_one_run_bound, clopper_pearson_epsilon
from fl_dp.central import CentralGaussianSum, project_to_ball
from fl_dp.client import ClientCore
from fl_dp.config import ConfigError, RunConfig
from fl_dp.distributed import WRAP_PROBABILITY, DistributedSkellam, mechanism_for
from fl_dp.inprocess import InProcessFederation, simulated_secure_sum
from fl_dp.privacy_policy import is_client_level_private, is_sample_level_private
from fl_dp.wire import CLIENT_EPSILON, Reply, decode, encode

#: a canary's gradient norm: far beyond every clip and normalisation, so the message saturates them
CANARY_MAGNITUDE = 1e6


def canary_directions(count: int, dim: int, seed: int) -> torch.Tensor:
    """``count`` unit vectors in R^dim (rows), from ``seed``: distinct coordinate axes where
    count <= dim (Dirac canaries, Steinke et al. 2023: orthogonal, so under a shared noised sum
    no canary's score carries another's message), else random directions."""
    generator = torch.Generator().manual_seed(seed)
    if count <= dim:
        directions = torch.zeros(count, dim)
        directions[torch.arange(count), torch.randperm(dim, generator=generator)[:count]] = 1.0
        return directions
    directions = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return (directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)).float()


class _Size:
    """Stands for a dataset where only its length is read."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class GradientCanary:
    """A client whose every gradient is ``magnitude * direction`` and whose local training moves
    the model by ``magnitude * direction``: its message points along ``direction`` for every
    strategy (gradient-sending or update-sending)."""

    def __init__(self, direction: torch.Tensor, magnitude: float = CANARY_MAGNITUDE) -> None:
        self.vector = direction * magnitude
        self.dim = direction.numel()
        self.data = _Size(1)

    def stochastic_gradient(self, x: torch.Tensor, batch_size: int, generator: Any) -> tuple[float, torch.Tensor]:
        return 0.0, self.vector.clone()

    def sgd(
        self, x: torch.Tensor, epochs: int, lr: float, batch_size: int, generator: Any, momentum: float = 0.0
    ) -> tuple[torch.Tensor, float, int]:
        return x + self.vector, 0.0, 1


class SampleCanaries:
    """A client's objective with gradient-canary samples appended to its data: sample n + j has
    the per-sample gradient ``magnitude * directions[j]`` (clipped by DP-SGD like any other)."""

    def __init__(self, objective: Any, directions: torch.Tensor, magnitude: float = CANARY_MAGNITUDE) -> None:
        self.objective = objective
        self.vectors = directions * magnitude
        self.dim = objective.dim
        self.real = len(objective.data)
        self.data = _Size(self.real + len(directions))
        self.regularizer_lambda = objective.regularizer_lambda

    def per_sample_gradients(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        real = indices[indices < self.real]
        rows = torch.empty(len(indices), self.dim)
        is_real = indices < self.real
        if len(real):
            rows[is_real] = self.objective.per_sample_gradients(x, real)
        rows[~is_real] = self.vectors[indices[~is_real] - self.real]
        return rows


@dataclass(frozen=True, kw_only=True)
class AuditResult:
    """One audited run."""

    cfg: RunConfig
    ledger_epsilon: float
    bound: OneRunBound
    scores: np.ndarray
    members: np.ndarray
    seconds: float

    def row(self) -> dict[str, Any]:
        """The run as a row of ``results/privacy_audit.csv``."""
        return {
            "strategy": self.cfg.strategy,
            "privacy_model": self.cfg.privacy_model,
            "target_epsilon": self.cfg.target_epsilon,
            "ledger_epsilon": self.ledger_epsilon,
            "audited_epsilon_lower_bound": self.bound.gdp_epsilon,
            "approx_dp_epsilon_lower_bound": self.bound.epsilon,
            "confidence": self.bound.confidence,
            "canaries": self.bound.canaries,
            "guesses": self.bound.guesses,
            "correct": self.bound.correct,
            "runs": 1,
            "seconds": self.seconds,
        }


def audit_run(cfg: RunConfig, canaries: int, *, seed: int = 0, confidence: float = 0.95) -> AuditResult:
    """Run ``cfg`` with ``canaries`` canaries and bound its epsilon from what the auditor sees."""
    started = time.perf_counter()
    if not cfg.is_private:
        raise ConfigError("an audit needs a private run: set target-epsilon or noise-multiplier")
    if canaries < 2:
        raise ConfigError(f"an audit needs at least 2 canaries, got {canaries}")
    members = np.random.default_rng([seed, 7]).random(canaries) < 0.5
    scores, ledger_epsilon = canary_scores(cfg, members, seed)
    # a local canary's coin moves its score either way (+u or -u); elsewhere a non-member leaves no trace
    two_sided = cfg.privacy_model == "local" and not is_sample_level_private(cfg)
    bound = best_one_run_bound(list(scores), list(members), cfg.delta, confidence, two_sided)
    return AuditResult(
        cfg=cfg, ledger_epsilon=ledger_epsilon, bound=bound, scores=scores, members=members, seconds=time.perf_counter() - started
    )


def canary_scores(cfg: RunConfig, members: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Run ``cfg`` with one canary per entry of ``members`` (True: in); (auditor's scores, ledger epsilon)."""
    if is_sample_level_private(cfg):
        return _sample_level_scores(cfg, members, seed)
    if is_client_level_private(cfg) and cfg.privacy_model == "local":
        return _local_scores(cfg, members, seed)
    if is_client_level_private(cfg) and cfg.privacy_model == "central":
        return _central_scores(cfg, members, seed)
    if is_client_level_private(cfg) and cfg.privacy_model == "distributed":
        return _distributed_scores(cfg, members, seed)
    raise ConfigError(f"no audit for strategy {cfg.strategy!r} under privacy-model {cfg.privacy_model!r}")


@dataclass(frozen=True, kw_only=True)
class ManyRunResult:
    """The classical audit: one canary per run, in or out by a coin, over independent runs."""

    epsilon: float
    runs: int
    threshold: float
    false_positives: int
    false_negatives: int
    ledger_epsilon: float
    seconds: float


def audit_many_runs(cfg: RunConfig, runs: int, *, seed: int = 0, confidence: float = 0.95) -> ManyRunResult:
    """Clopper-Pearson bound from ``runs`` independent runs of ``cfg`` (each with its own seed).

    The first half of the runs places the test's threshold (midway between the mean scores of
    in and out); the second half, unseen by that choice, is counted.
    """
    started = time.perf_counter()
    if runs < 8:
        raise ConfigError(f"a many-run audit needs at least 8 runs, got {runs}")
    coins = np.random.default_rng([seed, 11]).random(runs) < 0.5
    scores, ledger = np.zeros(runs), 0.0
    for r in range(runs):
        run_scores, epsilon = canary_scores(cfg.replace(seed=cfg.seed + 1000 * seed + r), coins[r : r + 1], seed + r)
        scores[r], ledger = run_scores[0], max(ledger, epsilon)
    half = runs // 2
    place, count = slice(0, half), slice(half, runs)
    ins, outs = scores[place][coins[place]], scores[place][~coins[place]]
    threshold = float((ins.mean() + outs.mean()) / 2) if len(ins) and len(outs) else 0.0
    said_in, truth = scores[count] > threshold, coins[count]
    fp, fn = int((said_in & ~truth).sum()), int((~said_in & truth).sum())
    negatives, positives = int((~truth).sum()), int(truth.sum())
    epsilon = (
        clopper_pearson_epsilon(fp, max(negatives, 1), fn, max(positives, 1), cfg.delta, confidence)
        if negatives and positives
        else 0.0
    )
    return ManyRunResult(
        epsilon=epsilon,
        runs=runs,
        threshold=threshold,
        false_positives=fp,
        false_negatives=fn,
        ledger_epsilon=ledger,
        seconds=time.perf_counter() - started,
    )


def ideal_scores(cfg: RunConfig, members: np.ndarray, noise_multiplier: float, seed: int = 0) -> np.ndarray | None:
    """The scores the same attack would give against a textbook implementation of the run's Gaussian
    mechanism (exact noise, exact sampling, no other client), or None where the release is not a
    Gaussian vector (dp-sign's signs, sample-level DP-SGD). Audits of the real run near these show
    that the distance to the ledger is the attack's, not the code's."""
    if not is_client_level_private(cfg) or cfg.strategy == "sign-vote":
        return None
    rng = np.random.default_rng([seed, 13])
    rounds, z = cfg.num_server_rounds, noise_multiplier
    if cfg.privacy_model == "local":
        # message +-S u + N(0, (2 S z)^2): in units of S, per round +-1 + 2 z N(0, 1)
        return np.where(members, 1.0, -1.0) * rounds + 2 * z * rng.standard_normal((len(members), rounds)).sum(1)
    rate = cfg.client_sample_rate
    sampled = (rng.random((len(members), rounds)) < rate) & members[:, None]
    y = torch.from_numpy(sampled + z * rng.standard_normal((len(members), rounds)))
    return _subsampled_gaussian_log_ratio(y, z, rate).sum(1).numpy()


def _canary_client(template: ClientCore, objective: Any, partition_id: int) -> ClientCore:
    """A copy of a real client of the run (same algorithm, mechanism and checks) with another objective."""
    client = copy.copy(template)
    client.objective = client.oracle = objective
    client.partition_id = partition_id
    client.byzantine = False
    return client


def _canary_ids(count: int) -> list[str]:
    return [f"canary-{i}" for i in range(count)]


def _local_scores(cfg: RunConfig, members: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    federation = InProcessFederation(cfg)
    dim = federation.server.dim
    directions = canary_directions(len(members), dim, seed)
    template = federation.clients["client-0"]
    signs = torch.from_numpy(np.where(members, 1.0, -1.0)).float()
    ids = _canary_ids(len(members))
    clients = {
        cid: _canary_client(template, GradientCanary(signs[i] * directions[i]), cfg.num_clients + i) for i, cid in enumerate(ids)
    }
    states: dict[str, dict[str, torch.Tensor]] = {cid: {} for cid in ids}
    totals = torch.zeros(len(members), dtype=torch.float64)
    spent = np.zeros(len(members))
    layouts = federation.server.algorithm.wire_layouts
    for server_round in range(1, cfg.num_server_rounds + 1):
        arrays, config, replies, failures = federation.train_cohort(server_round)
        for i, cid in enumerate(ids):
            out, metrics, states[cid] = clients[cid].train(arrays, config, states[cid])
            totals[i] += float(decode(out, dim, layouts).double() @ directions[i].double())
            spent[i] = metrics[CLIENT_EPSILON]
        federation.server.aggregate(server_round, replies, failures)
    # each canary's own Opacus ledger: it took part in every round
    return totals.numpy(), float(spent.max())


def _canary_members(
    cfg: RunConfig, members: np.ndarray, seed: int
) -> tuple[InProcessFederation, torch.Tensor, list[str], dict[str, ClientCore], dict[str, dict[str, torch.Tensor]]]:
    """The run, the canaries' directions, and the member canaries: their ids, clients and states
    (they join the population the server samples from; non-members stay out)."""
    federation = InProcessFederation(cfg)
    directions = canary_directions(len(members), federation.server.dim, seed)
    template = federation.clients["client-0"]
    ids = [cid for cid, member in zip(_canary_ids(len(members)), members) if member]
    clients = {
        cid: _canary_client(template, GradientCanary(directions[int(cid.split("-")[1])]), cfg.num_clients + i)
        for i, cid in enumerate(ids)
    }
    return federation, directions, ids, clients, {cid: {} for cid in ids}


def _canary_round(
    server_round: int,
    federation: InProcessFederation,
    ids: list[str],
    clients: dict[str, ClientCore],
    states: dict[str, dict[str, torch.Tensor]],
    other: Callable[[str, dict[str, np.ndarray], dict[str, Any]], tuple[Reply, torch.Tensor]],
    bound: float,
) -> tuple[list[Reply], torch.Tensor]:
    """One round with the member canaries in the population: every sampled client's reply, and the
    sum of the other clients' noiseless messages (``other`` trains one: (reply, message)), which the
    adversary of DP knows, since it knows their data."""
    server = federation.server
    cohort = server.sample(list(federation.clients) + ids)
    arrays, config = server.broadcast(server_round)
    replies, others = [], torch.zeros(server.dim, dtype=torch.float64)
    for cid in cohort:
        if cid in clients:
            out, metrics, states[cid] = clients[cid].train(arrays, config, states[cid])
            replies.append(Reply(cid, out, metrics))
        else:
            reply, message = other(cid, arrays, config)
            replies.append(reply)
            others += project_to_ball(message.double(), bound)
    return replies, others


def _central_scores(cfg: RunConfig, members: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    federation, directions, ids, clients, states = _canary_members(cfg, members, seed)
    server, dim = federation.server, federation.server.dim
    assert server.central is not None  # a central run
    recorder = _RecordingSum(server.central)
    server.central = recorder  # type: ignore[assignment]
    bound, sigma, rate = recorder.bound, server.noise_multiplier, cfg.client_sample_rate
    scores = torch.zeros(len(members), dtype=torch.float64)

    def other(cid: str, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[Reply, torch.Tensor]:
        out, metrics, federation.states[cid] = federation.clients[cid].train(arrays, config, federation.states[cid])
        return Reply(cid, out, metrics), decode(out, dim, server.algorithm.wire_layouts)

    for server_round in range(1, cfg.num_server_rounds + 1):
        replies, others = _canary_round(server_round, federation, ids, clients, states, other, bound)
        server.aggregate(server_round, replies)
        released = recorder.last.double() - others
        y = (directions.double() @ released) / bound
        scores += _subsampled_gaussian_log_ratio(y, sigma, rate)
    server.central = recorder.mechanism
    epsilon = max(server.ledger.epsilon(cid) for cid in ids) if ids else server.ledger.summary()[0]
    return scores.numpy(), epsilon


def _subsampled_gaussian_log_ratio(y: torch.Tensor, sigma: float, rate: float) -> torch.Tensor:
    """log of [(1 - q) N(y; 0, s^2) + q N(y; 1, s^2)] / N(y; 0, s^2), computed stably; y itself if s = 0."""
    if sigma == 0:
        return y
    shift = (y - 0.5) / sigma**2
    return torch.logaddexp(
        torch.full_like(y, math.log1p(-rate)) if rate < 1 else torch.full_like(y, -math.inf), math.log(rate) + shift
    )


def _distributed_scores(cfg: RunConfig, members: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    """As :func:`_central_scores`, from what secure aggregation reveals: the decoded ring sum of the
    shares, minus the other clients' noiseless messages (the adversary knows their data, not their
    noise shares, which are part of the noise). Scored with the Gaussian likelihood ratio at the
    noise the sum of the calibrated number of shares carries."""
    # the canaries join the population: the protocol's cohort bound (which a client checks the
    # announced cohort size against) must admit them, with the shares' scale it implies
    from scipy.stats import binom

    import fl_dp.client as client_module

    population = cfg.num_clients + int(members.sum())
    mechanism = dataclasses.replace(
        mechanism_for(cfg), max_cohort=max(2, int(binom.isf(WRAP_PROBABILITY, population, cfg.client_sample_rate)) + 1)
    )
    original = client_module.mechanism_for
    client_module.mechanism_for = lambda _cfg: mechanism  # type: ignore[assignment]
    try:
        return _distributed_rounds(cfg, members, seed, mechanism)
    finally:
        client_module.mechanism_for = original


def _distributed_rounds(
    cfg: RunConfig, members: np.ndarray, seed: int, mechanism: DistributedSkellam
) -> tuple[np.ndarray, float]:
    federation, directions, ids, clients, states = _canary_members(cfg, members, seed)
    server = federation.server
    assert server.distributed is not None  # a distributed run
    decoder = _RecordingDecoder(mechanism)
    server.distributed = decoder  # type: ignore[assignment]
    bound, sigma, rate = decoder.bound, decoder.effective_noise_multiplier, cfg.client_sample_rate
    messages: dict[str, torch.Tensor] = {}
    scores = torch.zeros(len(members), dtype=torch.float64)

    def other(cid: str, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[Reply, torch.Tensor]:
        client = _recording_share(federation.clients[cid], messages, cid)
        out, metrics, federation.states[cid] = client.train(arrays, config, federation.states[cid])
        return Reply(cid, out, metrics), messages.pop(cid)

    for server_round in range(1, cfg.num_server_rounds + 1):
        replies, others = _canary_round(server_round, federation, ids, clients, states, other, bound)
        server.aggregate_secure(server_round, *simulated_secure_sum(replies, decoder.mechanism))
        if decoder.last is None:  # the round was skipped: nothing was released
            continue
        y = (directions.double() @ (decoder.last.double() - others)) / bound
        scores += _subsampled_gaussian_log_ratio(y, sigma, rate)
        decoder.last = None
    server.distributed = mechanism
    epsilon = max(server.ledger.epsilon(cid) for cid in ids) if ids else server.ledger.summary()[0]
    return scores.numpy(), epsilon


def _recording_share(client: ClientCore, messages: dict[str, torch.Tensor], cid: str) -> ClientCore:
    """A copy of ``client`` that notes, under ``cid``, the noiseless message it turns into its share."""
    recorder = copy.copy(client)
    encode_share = client._share

    def share(message: Any, server_round: int, cohort: Any) -> np.ndarray:
        messages[cid] = decode(encode(message), client.objective.dim)
        return encode_share(message, server_round, cohort)

    recorder._share = share  # type: ignore[method-assign]
    return recorder


class _RecordingDecoder:
    """The run's distributed mechanism, keeping the last decoded sum it gave the server."""

    def __init__(self, mechanism: DistributedSkellam) -> None:
        self.mechanism = mechanism
        self.last: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.mechanism, name)

    def decode(self, total: np.ndarray, signs: torch.Tensor) -> torch.Tensor:
        self.last = self.mechanism.decode(total, signs)
        return self.last


class _RecordingSum:
    """The run's central mechanism, keeping the last noised sum it released."""

    def __init__(self, mechanism: CentralGaussianSum) -> None:
        self.mechanism = mechanism
        self.bound = mechanism.bound
        self.last = torch.zeros(0)

    def __call__(self, messages: list[torch.Tensor], dim: int, generator: torch.Generator) -> torch.Tensor:
        self.last = self.mechanism(messages, dim, generator)
        return self.last

    def release(self, sample_rate: float) -> Any:
        return self.mechanism.release(sample_rate)


def _sample_level_scores(cfg: RunConfig, members: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    federation = InProcessFederation(cfg)
    dim = federation.server.dim
    directions = canary_directions(len(members), dim, seed)
    host = "client-0"
    real = federation.clients[host]
    inside = torch.from_numpy(np.flatnonzero(members))
    real.objective = real.oracle = SampleCanaries(real.objective, directions[inside])  # type: ignore[assignment]
    totals = torch.zeros(dim, dtype=torch.float64)
    layouts = federation.server.algorithm.wire_layouts
    for server_round in range(1, cfg.num_server_rounds + 1):
        _, _, replies, failures = federation.train_cohort(server_round)
        for reply in replies:
            if reply.client_id == host:
                totals += decode(reply.arrays, dim, layouts).double()
        federation.server.aggregate(server_round, replies, failures)
    # the update is x_local - x: a canary's gradient pulls it along -u
    scores = -(directions.double() @ totals)
    return scores.numpy(), federation.server.ledger.epsilon(host)
