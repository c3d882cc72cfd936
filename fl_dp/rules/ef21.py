"""EF21 (Richtarik, Sokolov and Fatkhullin 2021), ||EF21|| and ||EF21-SGDM|| (Khirirat et al. 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fl_dp.compressors import Compressor
from fl_dp.rules.base import (
    DENSE,
    SPARSE,
    Algorithm,
    ClientTask,
    ClientUpdate,
    State,
    dense,
    gradient_metrics,
    local_direction,
    server_step,
)


@dataclass(frozen=True, kw_only=True)
class EF21(Algorithm):
    """Client i: c_i = C(v_i - g_i), g_i += c_i, send c_i; its first message is g_i(0) = v_i, dense.
    Server: G += (1 / num_clients) * sum_i c_i, x -= server_lr * G (or * G / ||G||)."""

    compressor: Compressor
    server_lr: float
    num_clients: int
    batch_size: int
    normalized_step: bool = False
    wire_layouts = frozenset({DENSE, SPARSE})

    @property
    def client_state_step(self) -> float | None:
        return 1.0

    def forget_client_share(self, state: State, share: torch.Tensor) -> None:
        state["G"] = state["G"] - share / self.num_clients

    def estimate(self, task: ClientTask, state: State) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(loss, v, gradient): what the client compresses against g_i; may update ``state``."""
        loss, grad = local_direction(task, self.batch_size)
        return loss, grad, grad

    def client_update(self, task: ClientTask) -> ClientUpdate:
        state = dict(task.state)
        loss, v, grad = self.estimate(task, state)
        g = state.get("g")
        increment = v if g is None else self.compressor(v - g, task.generator)
        state["g"] = (torch.zeros_like(v) if g is None else g) + dense(increment)
        return ClientUpdate(
            message=increment, state=state, train_loss=loss, num_examples=len(task.objective.data), metrics=gradient_metrics(grad)
        )

    def init_server_state(self, dim: int) -> State:
        return {"G": torch.zeros(dim)}

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, torch.stack(messages).sum(0), len(messages))

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        state["G"] = state["G"] + total / self.num_clients
        return x - self.server_lr * server_step(state["G"], self.normalized_step)


@dataclass(frozen=True, kw_only=True)
class EF21SGDM(EF21):
    """||EF21-SGDM||: the client compresses its momentum m_i = (1 - eta) m_i + eta * gradient."""

    eta: float

    def estimate(self, task: ClientTask, state: State) -> tuple[float, torch.Tensor, torch.Tensor]:
        loss, grad = local_direction(task, self.batch_size)
        m = grad if "m" not in state else (1 - self.eta) * state["m"] + self.eta * grad
        state["m"] = m
        return loss, m, grad


def ef21(*, compressor: Compressor, server_lr: float, num_clients: int, batch_size: int) -> EF21:
    """EF21: x -= server_lr * G."""
    return EF21(compressor=compressor, server_lr=server_lr, num_clients=num_clients, batch_size=batch_size)


def ef21_norm(*, compressor: Compressor, server_lr: float, num_rounds: int, num_clients: int, batch_size: int) -> EF21:
    """||EF21||: normalized steps of gamma0 / sqrt(T + 1), ``server_lr`` = gamma0, T = ``num_rounds``."""
    return EF21(
        compressor=compressor,
        server_lr=server_lr / math.sqrt(num_rounds + 1),
        num_clients=num_clients,
        batch_size=batch_size,
        normalized_step=True,
    )


def ef21_sgdm_norm(
    *, compressor: Compressor, eta: float, server_lr: float, num_rounds: int, num_clients: int, batch_size: int
) -> EF21SGDM:
    """||EF21-SGDM||: ||EF21|| on the clients' momentum of weight ``eta``."""
    return EF21SGDM(
        compressor=compressor,
        eta=eta,
        server_lr=server_lr / math.sqrt(num_rounds + 1),
        num_clients=num_clients,
        batch_size=batch_size,
        normalized_step=True,
    )
