"""Majority-vote sign methods (Bernstein et al. 2019; Jin et al. 2020) and EF-SignSGD (Karimireddy et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_dp.mechanisms import GaussianMechanism
from fl_dp.operators import Clipping
from fl_dp.privacy import Release
from fl_dp.rules.base import (
    SCALED_SIGNS,
    SIGNS,
    Algorithm,
    ClientTask,
    ClientUpdate,
    State,
    gradient_metrics,
    local_direction,
)
from fl_dp.signs import dp_sign, hard_sign, majority_vote, scaled_sign, stochastic_sign
from fl_dp.wire import SignVector

SIGN_COMPRESSORS = ("sign", "sto-sign", "dp-sign")


@dataclass(frozen=True, kw_only=True)
class SignVote(Algorithm):
    """Client: q_i = sign(g), sto-sign(g; b), or dp-sign(clip(g)) = sign(clip(g) + z), sent as bits.
    Server: x -= server_lr * majority_vote(q) (ties give 0). dp-sign's noise is part of the rule
    (the sign of a noised vector), so it is added here, not by a post-processor."""

    compressor: str
    server_lr: float
    batch_size: int
    sto_sign_bound: float = 1.0
    clipping: Clipping | None = None
    mechanism: GaussianMechanism | None = None
    wire_layouts = frozenset({SIGNS})

    def __post_init__(self) -> None:
        if self.compressor not in SIGN_COMPRESSORS:
            raise ValueError(f"unknown sign compressor {self.compressor!r}; choose one of {', '.join(SIGN_COMPRESSORS)}")
        if (self.compressor == "dp-sign") != (self.clipping is not None and self.mechanism is not None):
            raise ValueError("dp-sign, and only dp-sign, needs a clipping and a Gaussian mechanism")

    def expected_release(self, num_examples: int) -> Release | None:
        return self.mechanism.release() if self.mechanism is not None else None

    def client_update(self, task: ClientTask) -> ClientUpdate:
        loss, grad = local_direction(task, self.batch_size)
        release = None
        if self.compressor == "sign":
            signs = hard_sign(grad)
        elif self.compressor == "sto-sign":
            signs = stochastic_sign(grad, self.sto_sign_bound, task.generator)
        else:
            assert self.clipping is not None and self.mechanism is not None
            signs = dp_sign(self.clipping(grad), self.mechanism.std, task.generator)
            release = self.mechanism.release()
        return ClientUpdate(
            message=SignVector(signs),
            state=task.state,
            train_loss=loss,
            num_examples=len(task.objective.data),
            release=release,
            metrics=gradient_metrics(grad),
        )

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return x - self.server_lr * majority_vote(messages)


@dataclass(frozen=True, kw_only=True)
class ErrorFeedbackSign(Algorithm):
    """EF-SignSGD: p = lr * g + e, send (||p||_1 / d) sign(p), keep e = p - sent.
    Server: x -= the mean of the scaled signs (the step size is applied on the client)."""

    server_lr: float
    batch_size: int
    # the scale is one float beside the bits; it is left out when it is exactly 1
    wire_layouts = frozenset({SIGNS, SCALED_SIGNS})

    def client_update(self, task: ClientTask) -> ClientUpdate:
        loss, grad = local_direction(task, self.batch_size)
        p = self.server_lr * grad + task.state.get("e", torch.zeros_like(grad))
        scale, signs = scaled_sign(p)
        message = SignVector(signs, scale)
        state = {**task.state, "e": p - message.to_dense()}
        return ClientUpdate(message=message, state=state, train_loss=loss, num_examples=len(task.objective.data))

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, torch.stack(messages).sum(0), len(messages))

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        return x - total / count


def sign_vote(*, compressor: str, server_lr: float, batch_size: int, sto_sign_bound: float = 1.0) -> SignVote:
    """signSGD with majority vote; ``compressor`` 'sign' or 'sto-sign' (see :func:`dp_sign_vote`)."""
    return SignVote(compressor=compressor, server_lr=server_lr, batch_size=batch_size, sto_sign_bound=sto_sign_bound)


def dp_sign_vote(*, clip: float, noise_multiplier: float, server_lr: float, batch_size: int) -> SignVote:
    """Majority vote of dp-sign: sign(clip_C(g) + N(0, (noise_multiplier * 2C)^2)) per client and round
    (sensitivity 2C: any two clipped gradients differ by at most that)."""
    clipping = Clipping(tau=clip)
    mechanism = GaussianMechanism.from_noise_multiplier(noise_multiplier, 2 * clipping.bound)
    return SignVote(compressor="dp-sign", server_lr=server_lr, batch_size=batch_size, clipping=clipping, mechanism=mechanism)


def ef_sign(*, server_lr: float, batch_size: int) -> ErrorFeedbackSign:
    return ErrorFeedbackSign(server_lr=server_lr, batch_size=batch_size)
