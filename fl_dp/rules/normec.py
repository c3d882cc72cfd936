"""alpha-NormEC (Shulgin, Khirirat and Richtarik 2025), Clip21, and their baselines without error compensation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_dp.operators import Clipping, SmoothedNormalization, identity
from fl_dp.rules.base import Algorithm, ClientTask, ClientUpdate, Operator, State, gradient_metrics, local_direction, server_step


@dataclass(frozen=True, kw_only=True)
class ErrorCompensated(Algorithm):
    """Client i (state g_i): v_i = gradient (or Fed-alpha-NormEC's pseudo-gradient of ``local_steps``
    local steps), D_i = operator(v_i - g_i), g_i += beta * D_i (noiseless), send D_i.
    Server: G += (beta / num_clients) * sum_i D_i (G is the mean of all clients' g_i, the sampled
    ones moved), x -= server_lr * G, or * G / ||G|| with ``normalized_step``."""

    operator: Operator
    server_lr: float
    num_clients: int
    batch_size: int
    beta: float = 1.0
    local_steps: int = 1
    client_lr: float = 0.0
    normalized_step: bool = False

    @property
    def message_bound(self) -> float | None:
        return getattr(self.operator, "bound", None)

    @property
    def client_state_step(self) -> float | None:
        return self.beta

    def forget_client_share(self, state: State, share: torch.Tensor) -> None:
        state["G"] = state["G"] - share / self.num_clients

    def client_update(self, task: ClientTask) -> ClientUpdate:
        loss, v = local_direction(task, self.batch_size, self.local_steps, self.client_lr)
        g = task.state.get("g", torch.zeros_like(v))
        increment = self.operator(v - g, task.generator)
        state = {**task.state, "g": g + self.beta * increment}
        return ClientUpdate(
            message=increment, state=state, train_loss=loss, num_examples=len(task.objective.data), metrics=gradient_metrics(v)
        )

    def init_server_state(self, dim: int) -> State:
        return {"G": torch.zeros(dim)}

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, torch.stack(messages).sum(0), len(messages))

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        state["G"] = state["G"] + (self.beta / self.num_clients) * total
        return x - self.server_lr * server_step(state["G"], self.normalized_step)


@dataclass(frozen=True, kw_only=True)
class Uncompensated(Algorithm):
    """Client: send operator(gradient). Server: G = mean of the messages, x -= server_lr * G."""

    operator: Operator
    server_lr: float
    batch_size: int

    @property
    def message_bound(self) -> float | None:
        return getattr(self.operator, "bound", None)

    def client_update(self, task: ClientTask) -> ClientUpdate:
        loss, grad = local_direction(task, self.batch_size)
        return ClientUpdate(
            message=self.operator(grad, task.generator),
            state=task.state,
            train_loss=loss,
            num_examples=len(task.objective.data),
            metrics=gradient_metrics(grad),
        )

    def init_server_state(self, dim: int) -> State:
        return {"G": torch.zeros(dim)}

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, torch.stack(messages).sum(0), len(messages))

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        state["G"] = total / count
        return x - self.server_lr * state["G"]


def alpha_normec(
    *,
    alpha: float,
    server_lr: float,
    num_clients: int,
    batch_size: int,
    beta: float = 1.0,
    local_steps: int = 1,
    client_lr: float = 0.0,
    server_normalize: bool = False,
) -> ErrorCompensated:
    """alpha-NormEC: smoothed normalization Norm_alpha with error compensation; ``local_steps`` > 1 is
    Fed-alpha-NormEC (arXiv 2512.21521), ``server_normalize`` the normalized server step."""
    return ErrorCompensated(
        operator=SmoothedNormalization(alpha=alpha),
        server_lr=server_lr,
        num_clients=num_clients,
        batch_size=batch_size,
        beta=beta,
        local_steps=local_steps,
        client_lr=client_lr,
        normalized_step=server_normalize,
    )


def clip21(*, tau: float, server_lr: float, num_clients: int, batch_size: int) -> ErrorCompensated:
    """Clip21: clipping instead of smoothed normalization, with error feedback (beta = 1)."""
    return ErrorCompensated(operator=Clipping(tau=tau), server_lr=server_lr, num_clients=num_clients, batch_size=batch_size)


def dp_normalized_sgd(*, alpha: float, server_lr: float, batch_size: int) -> Uncompensated:
    """alpha-NormEC's baseline without error compensation: the mean of Norm_alpha(gradient)."""
    return Uncompensated(operator=SmoothedNormalization(alpha=alpha), server_lr=server_lr, batch_size=batch_size)


def mean_sgd(*, server_lr: float, batch_size: int) -> Uncompensated:
    """Distributed SGD: the mean of the clients' gradients (the sign experiments' baseline)."""
    return Uncompensated(operator=identity, server_lr=server_lr, batch_size=batch_size)
