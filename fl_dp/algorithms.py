"""Every strategy of the project as two hooks on flat tensors.

``client_update`` turns the global vector x, the client's persistent state and
its local objective into one message; ``server_update`` turns the decoded
messages of a round into the next x. The Flower strategy/ClientApp and the
in-process loop both call exactly these.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch

from fl_dp.compressors import SparseVector, build_compressor
from fl_dp.config import ConfigError, RunConfig
from fl_dp.distributed import mechanism_for
from fl_dp.dpsgd import client_noise_multiplier, cooling_rate, epoch_mask, masked_noisy_sum, poisson_batch
from fl_dp.mechanisms import GaussianMechanism
from fl_dp.operators import Clipping, SmoothedNormalization
from fl_dp.privacy import NoiseBeyondUse, Release, analytic_gaussian_noise_multiplier, calibrate_noise_multiplier
from fl_dp.training import Objective, local_pseudo_gradient
from fl_dp.signs import dp_sign, hard_sign, majority_vote, scaled_sign, stochastic_sign
from fl_dp.wire import Payload, SignVector

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientTask:
    """What one client gets in one round."""

    x: torch.Tensor
    state: State
    objective: Objective
    generator: torch.Generator
    server_round: int


@dataclass(frozen=True)
class ClientUpdate:
    """What one client produces in one round. ``release`` is None when nothing private was released.

    ``train_loss`` and ``metrics`` are computed from private data: the client sends them only
    when its release is not private.
    """

    message: Payload
    state: State
    train_loss: float
    num_examples: int
    release: Release | None = None
    metrics: dict[str, float] = field(default_factory=dict)


DENSE = frozenset({"dense"})
SPARSE = frozenset({"values", "indices"})
SIGNS = frozenset({"signs"})
SCALED_SIGNS = frozenset({"signs", "scale"})

#: the noise of a message of dimension d stays below std * (sqrt(d) + NOISE_TAIL) except with
#: probability exp(-NOISE_TAIL^2 / 2) < 1e-9 (Gaussian concentration of the norm, a 1-Lipschitz map)
NOISE_TAIL = 6.5


class Algorithm(ABC):
    """A federated algorithm: client and server hooks plus how messages are weighted."""

    #: weight each message by the client's number of examples (else uniformly)
    weighted_by_examples: bool = False
    #: the key sets of the wire layouts its honest clients send (see :mod:`fl_dp.wire`)
    wire_layouts: frozenset[frozenset[str]] = frozenset({DENSE})
    #: whether :meth:`expected_release` depends on the client's number of examples
    release_depends_on_data_size: bool = False

    @property
    def client_state_step(self) -> float | None:
        """s where a client's state moves by s * message and the server's state holds the mean of
        the clients' states (error feedback); None where the server state mirrors no client."""
        return None

    def forget_client_share(self, state: State, share: torch.Tensor) -> None:
        """Remove one client's state ``share`` from the server's ``state`` (a client that lost its own)."""
        raise NotImplementedError

    def message_norm_limit(self, dim: int) -> float | None:
        """An L2 norm no honest message exceeds (with probability 1 - 1e-9), or None if unbounded."""
        return None

    def expected_release(self, num_examples: int) -> Release | None:
        """What an honest client of this run releases in one round (None: nothing private).

        The server charges this, never what a client claims.
        """
        return None

    @abstractmethod
    def client_update(self, task: ClientTask) -> ClientUpdate: ...

    def init_server_state(self, dim: int) -> State:
        return {}

    @abstractmethod
    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        """Next global vector; may update ``state`` in place."""

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        """Next global vector from the (possibly noised) sum of the round's messages.

        ``count`` is the denominator where the rule takes a mean: the number of messages,
        or, under central DP with Poisson sampling, the expected cohort size (a data-independent
        denominator keeps the sum's sensitivity). Only algorithms whose server rule is linear in
        the messages have it; they are the ones the central privacy model supports.
        """
        raise NotImplementedError(f"{type(self).__name__} has no server rule on a sum of messages")


def _dense(message: Payload) -> torch.Tensor:
    return message.to_dense() if isinstance(message, (SparseVector, SignVector)) else message


def weighted_mean(messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    return torch.stack(messages).mul(torch.tensor(weights).unsqueeze(1) / total).sum(0)


@dataclass(frozen=True)
class LocalTraining(Algorithm):
    """FedAvg (McMahan et al. 2017) and client-level DP-FedAvg.

    Client: local SGD from x, update delta = x_local - x; DP-FedAvg clips delta
    to ``clip`` and adds Gaussian noise before sending. Server: x += server_lr * mean(delta)
    (weighted by examples without privacy, uniform with it, since weights would leak).
    """

    client_lr: float
    local_epochs: int
    batch_size: int
    momentum: float
    server_lr: float
    clipping: Clipping | None = None
    mechanism: GaussianMechanism | None = None

    @property
    def weighted_by_examples(self) -> bool:  # type: ignore[override]
        return self.clipping is None

    def message_norm_limit(self, dim: int) -> float | None:
        return _bounded_message_limit(self.clipping, self.mechanism, dim)

    def expected_release(self, num_examples: int) -> Release | None:
        return self.mechanism.release() if self.mechanism is not None else None

    def client_update(self, task: ClientTask) -> ClientUpdate:
        x_local, loss, _ = task.objective.sgd(
            task.x, self.local_epochs, self.client_lr, self.batch_size, task.generator, self.momentum
        )
        delta = x_local - task.x
        release = None
        if self.clipping is not None:
            delta = self.clipping(delta)
            if self.mechanism is not None:
                delta = self.mechanism(delta, task.generator)
                release = self.mechanism.release()
        return ClientUpdate(delta, task.state, loss, len(task.objective.data), release)

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, weighted_mean(messages, weights), 1.0)

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        return x + self.server_lr * total / count


@dataclass(frozen=True)
class ErrorFeedback(Algorithm):
    """The error-feedback family: alpha-NormEC, its baselines, Clip21, EF21, ||EF21||, ||EF21-SGDM||.

    Client i (state g_i, and momentum m_i if ``momentum_eta``):
        v_i = gradient (or m_i = (1 - eta) m_i + eta * gradient; or, with ``local_steps`` K > 1,
              the pseudo-gradient (x - y_K) / (client_lr K) of K local SGD steps: Fed-alpha-NormEC)
        D_i = operator(v_i - g_i)      [``error_feedback``; the first message is v_i - 0 dense if ``dense_first``]
        D_i = operator(v_i)            [no error feedback]
        g_i += beta * D_i              (noiseless: the state never sees the noise)
        send D_i + z_i                 (z_i from ``mechanism``)
    Server: G += (beta / num_clients) * sum_i message_i with error feedback, else G = mean_i message_i;
            x -= server_lr * G (or * G / ||G|| with ``normalized_step``).
    """

    operator: Callable[..., Payload]
    server_lr: float
    num_clients: int
    batch_size: int
    beta: float = 1.0
    error_feedback: bool = True
    mechanism: GaussianMechanism | None = None
    normalized_step: bool = False
    dense_first: bool = False
    momentum_eta: float | None = None
    operator_takes_generator: bool = False
    local_steps: int = 1
    client_lr: float = 0.0

    @property
    def wire_layouts(self) -> frozenset[frozenset[str]]:  # type: ignore[override]
        return frozenset({DENSE, SPARSE}) if self.operator_takes_generator else frozenset({DENSE})

    def message_norm_limit(self, dim: int) -> float | None:
        return _bounded_message_limit(self.operator, self.mechanism, dim)

    def expected_release(self, num_examples: int) -> Release | None:
        return self.mechanism.release() if self.mechanism is not None else None

    def client_update(self, task: ClientTask) -> ClientUpdate:
        if self.local_steps > 1:
            loss, grad = local_pseudo_gradient(
                task.objective, task.x, self.local_steps, self.client_lr, self.batch_size, task.generator
            )
        else:
            loss, grad = task.objective.stochastic_gradient(task.x, self.batch_size, task.generator)
        state = dict(task.state)
        v = grad
        if self.momentum_eta is not None:
            v = grad if "m" not in state else (1 - self.momentum_eta) * state["m"] + self.momentum_eta * grad
            state["m"] = v
        if self.error_feedback:
            g = state.get("g", torch.zeros_like(v))
            if self.dense_first and "g" not in state:
                increment: Payload = v - g
            else:
                increment = self._apply(v - g, task.generator)
            state["g"] = g + self.beta * _dense(increment)
        else:
            increment = self._apply(v, task.generator)
        message: Payload = increment
        release = None
        if self.mechanism is not None:
            message = self.mechanism(_dense(increment), task.generator)
            release = self.mechanism.release()
        metrics = {"grad-norm": float(torch.linalg.vector_norm(grad))}
        return ClientUpdate(message, state, loss, len(task.objective.data), release, metrics)

    def _apply(self, v: torch.Tensor, generator: torch.Generator) -> Payload:
        if self.operator_takes_generator:
            return self.operator(v, generator)
        return self.operator(v)

    def init_server_state(self, dim: int) -> State:
        return {"G": torch.zeros(dim)}

    @property
    def client_state_step(self) -> float | None:
        return self.beta if self.error_feedback else None

    def forget_client_share(self, state: State, share: torch.Tensor) -> None:
        state["G"] = state["G"] - share / self.num_clients

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, torch.stack(messages).sum(0), len(messages))

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        # G tracks the mean of all num_clients states g_i: only the sampled ones moved this round
        if self.error_feedback:
            state["G"] = state["G"] + (self.beta / self.num_clients) * total
        else:
            state["G"] = total / count
        step = state["G"]
        if self.normalized_step:
            norm = torch.linalg.vector_norm(step)
            if norm == 0:
                return x.clone()
            step = step / norm
        return x - self.server_lr * step


@dataclass(frozen=True)
class SignVote(Algorithm):
    """signSGD with majority vote (Bernstein et al. 2019; Jin et al. 2020).

    Client: q_i = sign(g), sto-sign(g; b) or dp-sign(clip(g)) = sign(clip(g) + z), sent as bits.
    Server: x -= server_lr * majority_vote(q) (ties give 0).
    """

    kind: str
    server_lr: float
    batch_size: int
    sto_sign_bound: float = 1.0
    clipping: Clipping | None = None
    mechanism: GaussianMechanism | None = None
    wire_layouts = frozenset({SIGNS})

    def expected_release(self, num_examples: int) -> Release | None:
        return self.mechanism.release() if self.mechanism is not None else None

    def client_update(self, task: ClientTask) -> ClientUpdate:
        loss, grad = task.objective.stochastic_gradient(task.x, self.batch_size, task.generator)
        release = None
        if self.kind == "sign":
            signs = hard_sign(grad)
        elif self.kind == "sto-sign":
            signs = stochastic_sign(grad, self.sto_sign_bound, task.generator)
        elif self.kind == "dp-sign":
            assert self.clipping is not None and self.mechanism is not None
            signs = dp_sign(self.clipping(grad), self.mechanism.std, task.generator)
            release = self.mechanism.release()
        else:
            raise ValueError(f"unknown sign compressor {self.kind!r}")
        metrics = {"grad-norm": float(torch.linalg.vector_norm(grad))}
        return ClientUpdate(SignVector(signs), task.state, loss, len(task.objective.data), release, metrics)

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return x - self.server_lr * majority_vote(messages)


@dataclass(frozen=True)
class ErrorFeedbackSign(Algorithm):
    """EF-SignSGD (Karimireddy et al. 2019): p = lr * g + e, send (||p||_1/d) sign(p), keep e = p - sent.

    Server: x -= mean of the scaled signs (the step size is applied on the client).
    """

    server_lr: float
    batch_size: int
    # the scale is one float beside the bits; it is left out when it is exactly 1
    wire_layouts = frozenset({SIGNS, SCALED_SIGNS})

    def client_update(self, task: ClientTask) -> ClientUpdate:
        loss, grad = task.objective.stochastic_gradient(task.x, self.batch_size, task.generator)
        p = self.server_lr * grad + task.state.get("e", torch.zeros_like(grad))
        scale, signs = scaled_sign(p)
        message = SignVector(signs, scale)
        state = {**task.state, "e": p - message.to_dense()}
        return ClientUpdate(message, state, loss, len(task.objective.data))

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, torch.stack(messages).sum(0), len(messages))

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        return x - total / count


@dataclass(frozen=True)
class DPSGD(Algorithm):
    """Sample-level DP-SGD inside each client, with random sparsification (``final_rate`` > 0).

    Each local epoch e of the run's E = rounds * local_epochs uses one mask, shared by all
    clients (seeded from ``mask_seed`` and e) and dropping r(e) = r* e / (E - 1) of the
    coordinates. Steps: Poisson batch (rate B/N), per-sample gradients, mask, clip to C, sum,
    + mask * N(0, (sigma C)^2), / B, SGD step. The client sends its update x_local - x, which is
    zero off the round's masks: values + indices. Server: x += server_lr * mean(update).
    sigma is set (``noise_multiplier``) or calibrated by the client from its own sample rate.
    """

    client_lr: float
    local_epochs: int
    batch_size: int
    momentum: float
    clip: float
    delta: float
    num_rounds: int
    server_lr: float
    final_rate: float = 0.0
    target_epsilon: float = 0.0
    noise_multiplier: float = 0.0
    mask_seed: int = 0
    wire_layouts = frozenset({DENSE, SPARSE})
    release_depends_on_data_size = True

    def schedule(self, num_examples: int) -> tuple[float, float, int]:
        """(sigma, Poisson sample rate B / N, steps per local epoch) of a client with N examples."""
        sample_rate = min(1.0, self.batch_size / num_examples)
        steps_per_epoch = max(1, round(1 / sample_rate))
        total_steps = steps_per_epoch * self.num_rounds * self.local_epochs
        sigma = self.noise_multiplier or client_noise_multiplier(self.target_epsilon, self.delta, sample_rate, total_steps)
        return sigma, sample_rate, steps_per_epoch

    def expected_release(self, num_examples: int) -> Release | None:
        sigma, sample_rate, steps_per_epoch = self.schedule(num_examples)
        return Release(sigma, sample_rate, steps_per_epoch * self.local_epochs)

    def client_update(self, task: ClientTask) -> ClientUpdate:
        objective = task.objective
        n = len(objective.data)
        sigma, sample_rate, steps_per_epoch = self.schedule(n)
        total_epochs = self.num_rounds * self.local_epochs
        expected_batch = sample_rate * n
        x = task.x.clone()
        velocity = torch.zeros_like(x)
        support = torch.zeros_like(x, dtype=torch.bool)
        for local_epoch in range(self.local_epochs):
            epoch = (task.server_round - 1) * self.local_epochs + local_epoch
            mask = epoch_mask(x.numel(), cooling_rate(self.final_rate, epoch, total_epochs), hash((self.mask_seed, epoch)) & (2**62 - 1))
            support |= mask.bool()
            for _ in range(steps_per_epoch):
                batch = poisson_batch(n, sample_rate, task.generator)
                per_sample = objective.per_sample_gradients(x, batch)
                grad = masked_noisy_sum(per_sample, mask, self.clip, sigma * self.clip, task.generator) / expected_batch
                velocity = self.momentum * velocity + grad
                x = x - self.client_lr * velocity
        update = x - task.x
        message: Payload = update
        if not bool(support.all()):
            message = SparseVector.from_dense(update, torch.nonzero(support).flatten())
        release = Release(sigma, sample_rate, steps_per_epoch * self.local_epochs)
        # no training loss: it would be an unaccounted release of the private data
        return ClientUpdate(message, task.state, math.nan, n, release)

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, weighted_mean(messages, weights), 1.0)

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        return x + self.server_lr * total / count


def _identity(v: torch.Tensor) -> torch.Tensor:
    return v


def _bounded_message_limit(operator: object, mechanism: GaussianMechanism | None, dim: int) -> float | None:
    """The operator's bound (with float32 slack) plus the noise's high-probability norm."""
    bound = getattr(operator, "bound", None)
    if bound is None:
        return None
    noise = mechanism.std * (math.sqrt(dim) + NOISE_TAIL) if mechanism is not None else 0.0
    return bound * (1 + 1e-5) + noise


# ---------------------------------------------------------------- construction from a run config

CLIENT_LEVEL_PRIVATE = ("dp-fedavg", "alpha-normec", "dp-normalized-sgd", "clip21")


SAMPLE_LEVEL_PRIVATE = ("dp-sgd", "dp-sgd-rs")


def is_client_level_private(cfg: RunConfig) -> bool:
    return cfg.strategy in CLIENT_LEVEL_PRIVATE or (cfg.strategy == "sign-vote" and cfg.sign_compressor == "dp-sign")


def message_bound(cfg: RunConfig) -> float:
    """The L2 radius of the ball that every noiseless client message of the strategy lies in."""
    if cfg.strategy in ("alpha-normec", "dp-normalized-sgd"):
        return SmoothedNormalization(cfg.alpha).bound
    if cfg.strategy in ("clip21", "dp-fedavg", "sign-vote"):
        return Clipping(cfg.clip).bound
    raise ValueError(f"{cfg.strategy} has no bounded-sensitivity release")


def sensitivity(cfg: RunConfig) -> float:
    """L2 sensitivity of one release under the run's neighbouring relation.

    ``local`` (replace one client's data): any two datasets of a client give noiseless messages
    in the same ball of radius ``bound``, whatever its state, so they differ by at most 2 * bound.
    ``central`` (add or remove one client): the sum changes by one message, at most ``bound``.
    """
    bound = message_bound(cfg)
    return 2 * bound if cfg.privacy_model == "local" else bound


def resolve_noise_multiplier(cfg: RunConfig) -> float:
    """The noise multiplier of the run's mechanism: set directly, calibrated from the target, or 0.

    ``local``: each client's release is charged at sample rate 1 (worst case: a client in every
    planned round). ``central``: one release per round of the noised sum, every client charged at
    its Poisson rate q = clients-per-round / num-clients. dp-sign's ``round-epsilon`` calibrates
    each round's release alone with the analytic Gaussian mechanism (Balle and Wang 2018), exact
    for every epsilon (the classical sqrt(2 ln(1.25 / delta)) / eps fails above eps = 1).
    A target that needs a noise multiplier beyond use is a :class:`ConfigError` on ``target-epsilon``.
    """
    if cfg.noise_multiplier > 0:
        return cfg.noise_multiplier
    if cfg.privacy_model == "distributed":
        return mechanism_for(cfg).noise_multiplier
    if cfg.strategy in SAMPLE_LEVEL_PRIVATE:
        return 0.0  # each client calibrates from its own sample rate
    if cfg.round_epsilon > 0:
        return analytic_gaussian_noise_multiplier(cfg.round_epsilon, cfg.delta)
    if cfg.target_epsilon > 0:
        rate = cfg.client_sample_rate if cfg.privacy_model == "central" else 1.0
        try:
            return calibrate_noise_multiplier(cfg.target_epsilon, cfg.delta, sample_rate=rate, steps=cfg.num_server_rounds)
        except NoiseBeyondUse as err:
            raise ConfigError(f"target-epsilon {cfg.target_epsilon} cannot be reached with useful noise: {err}") from None
    return 0.0


def client_noise_multiplier_of(cfg: RunConfig) -> float:
    """The Gaussian noise multiplier a client adds itself: the run's under ``local``; none under
    ``central`` (the server adds it) and ``distributed`` (Skellam shares, :mod:`fl_dp.distributed`)."""
    return resolve_noise_multiplier(cfg) if cfg.privacy_model == "local" else 0.0


def build_algorithm(cfg: RunConfig, dim: int, noise_multiplier: float | None = None) -> Algorithm:
    """The algorithm of ``cfg.strategy`` for a model of ``dim`` parameters.

    ``noise_multiplier`` is the noise the client adds itself (under ``central`` it adds none:
    the server's :class:`fl_dp.central.CentralGaussianSum` does, once per round).
    """
    if noise_multiplier is None:
        noise_multiplier = client_noise_multiplier_of(cfg)
    mechanism = None
    if is_client_level_private(cfg) and cfg.privacy_model == "local":
        mechanism = GaussianMechanism.from_noise_multiplier(noise_multiplier, sensitivity(cfg))
    if cfg.strategy == "fedavg":
        return LocalTraining(cfg.client_lr, cfg.local_epochs, cfg.batch_size, cfg.momentum, cfg.server_lr or 1.0)
    if cfg.strategy in SAMPLE_LEVEL_PRIVATE:
        return DPSGD(
            cfg.client_lr,
            cfg.local_epochs,
            cfg.batch_size,
            cfg.momentum,
            cfg.clip,
            cfg.delta,
            cfg.num_server_rounds,
            cfg.server_lr or 1.0,
            final_rate=cfg.rs_final_rate if cfg.strategy == "dp-sgd-rs" else 0.0,
            target_epsilon=cfg.target_epsilon,
            noise_multiplier=noise_multiplier,
            mask_seed=cfg.seed,
        )
    if cfg.strategy == "dp-fedavg":
        return LocalTraining(
            cfg.client_lr, cfg.local_epochs, cfg.batch_size, cfg.momentum, cfg.server_lr or 1.0, Clipping(cfg.clip), mechanism
        )
    _require_server_lr(cfg)
    if cfg.strategy == "sign-vote":
        clipping = Clipping(cfg.clip) if mechanism is not None else None
        return SignVote(cfg.sign_compressor, cfg.server_lr, cfg.batch_size, cfg.sto_sign_bound, clipping, mechanism)
    if cfg.strategy == "ef-sign":
        return ErrorFeedbackSign(cfg.server_lr, cfg.batch_size)
    common = dict(server_lr=cfg.server_lr, num_clients=cfg.num_clients, batch_size=cfg.batch_size)
    if cfg.strategy == "mean-sgd":
        return ErrorFeedback(_identity, error_feedback=False, **common)
    if cfg.strategy == "alpha-normec":
        return ErrorFeedback(
            SmoothedNormalization(cfg.alpha),
            beta=cfg.beta,
            mechanism=mechanism,
            normalized_step=cfg.server_normalize,
            local_steps=cfg.local_steps,
            client_lr=cfg.client_lr,
            **common,
        )
    if cfg.strategy == "dp-normalized-sgd":
        return ErrorFeedback(SmoothedNormalization(cfg.alpha), error_feedback=False, mechanism=mechanism, **common)
    if cfg.strategy == "clip21":
        return ErrorFeedback(Clipping(cfg.clip), mechanism=mechanism, **common)
    compressor = build_compressor(cfg.compressor, dim, cfg.compress_k, cfg.compress_ratio)
    ef21 = dict(operator=compressor, dense_first=True, operator_takes_generator=True)
    if cfg.strategy == "ef21":
        return ErrorFeedback(**ef21, **common)
    rounds_scaled = dict(common, server_lr=cfg.server_lr / math.sqrt(cfg.num_server_rounds + 1))
    if cfg.strategy == "ef21-norm":
        return ErrorFeedback(**ef21, normalized_step=True, **rounds_scaled)
    if cfg.strategy == "ef21-sgdm-norm":
        return ErrorFeedback(**ef21, normalized_step=True, momentum_eta=cfg.sgdm_eta, **rounds_scaled)
    raise ValueError(f"unknown strategy {cfg.strategy!r}")


def _require_server_lr(cfg: RunConfig) -> None:
    if cfg.server_lr <= 0:
        raise ConfigError(
            f"{cfg.strategy} needs server-lr > 0 (compute a theory step size with fl_dp.stepsizes and pass it)"
        )
