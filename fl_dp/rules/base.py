"""What every update rule is: a client hook and a server hook on flat tensors.

``client_update`` turns the global vector x, the client's persistent state and its local
objective into one noiseless message (a rule whose noise is part of the rule, dp-sign or
DP-SGD, adds it here too); ``server_update`` / ``apply_sum`` turn a round's decoded messages
into the next x. Client-level Gaussian noise is not a rule's business: it is a post-processor
(:mod:`fl_dp.mechanisms`) applied to the message afterwards. The Flower apps and the in-process
loop call exactly these hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fl_dp.compressors import SparseVector
from fl_dp.privacy import Release
from fl_dp.training import local_pseudo_gradient
from fl_dp.wire import Payload, SignVector

State = dict[str, torch.Tensor]

DENSE = frozenset({"dense"})
SPARSE = frozenset({"values", "indices"})
SIGNS = frozenset({"signs"})
SCALED_SIGNS = frozenset({"signs", "scale"})


class Operator(Protocol):
    """A (possibly random) map of a dense vector: a norm bound (``bound``) or a compressor.

    Every operator and compressor takes the same arguments, so a rule never asks which it holds.
    """

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class ClientTask:
    """What one client gets in one round."""

    x: torch.Tensor
    state: State
    objective: Any  # fl_dp.training.Objective, or anything with the oracle methods a rule calls
    generator: torch.Generator
    server_round: int


@dataclass(frozen=True, kw_only=True)
class ClientUpdate:
    """What one client's rule produces in one round. ``release`` is set only by a rule whose
    noise is its own (dp-sign, DP-SGD); client-level Gaussian noise is a post-processor's.

    ``train_loss`` and ``metrics`` are computed from private data: the client sends them only
    when its run is not private.
    """

    message: Payload
    state: State
    train_loss: float
    num_examples: int
    release: Release | None = None
    metrics: dict[str, float] = field(default_factory=dict)


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

    @property
    def message_bound(self) -> float | None:
        """The L2 radius every noiseless message of this rule lies in, or None if unbounded."""
        return None

    def message_support(self, server_round: int, dim: int) -> torch.Tensor | None:
        """The coordinates an honest message of round ``server_round`` may change (a bool mask), where
        the server knows them in advance; None where any may."""
        return None

    def expected_release(self, num_examples: int) -> Release | None:
        """What an honest client releases in one round through the rule's own noise (None: the
        rule adds none). The server charges this, never what a client claims."""
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


def dense(message: Payload) -> torch.Tensor:
    """The dense vector a message stands for."""
    return message.to_dense() if isinstance(message, (SparseVector, SignVector)) else message


def weighted_mean(messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    return torch.stack(messages).mul(torch.tensor(weights).unsqueeze(1) / total).sum(0)


def local_direction(
    task: ClientTask, batch_size: int, local_steps: int = 1, client_lr: float = 0.0
) -> tuple[float, torch.Tensor]:
    """(loss, v): the stochastic gradient at x, or with ``local_steps`` K > 1 the pseudo-gradient
    (x - y_K) / (client_lr K) of K local SGD steps (Fed-alpha-NormEC)."""
    if local_steps > 1:
        return local_pseudo_gradient(task.objective, task.x, local_steps, client_lr, batch_size, task.generator)
    loss, grad = task.objective.stochastic_gradient(task.x, batch_size, task.generator)
    return loss, grad


def gradient_metrics(grad: torch.Tensor) -> dict[str, float]:
    """The non-private diagnostics a gradient-based client reports (only in non-private runs)."""
    return {"grad-norm": float(torch.linalg.vector_norm(grad))}


def server_step(G: torch.Tensor, normalized: bool) -> torch.Tensor:
    """G, or G / ||G|| (zero stays zero) for the normalized server steps of ||EF21|| and alpha-NormEC."""
    if not normalized:
        return G
    norm = torch.linalg.vector_norm(G)
    return torch.zeros_like(G) if norm == 0 else G / norm
