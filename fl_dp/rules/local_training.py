"""FedAvg (McMahan et al. 2017) and client-level DP-FedAvg (McMahan et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_dp.operators import Clipping
from fl_dp.rules.base import Algorithm, ClientTask, ClientUpdate, State, weighted_mean


@dataclass(frozen=True, kw_only=True)
class LocalTraining(Algorithm):
    """Client: local SGD from x, update delta = x_local - x (DP-FedAvg: clipped to ``clipping``).
    Server: x += server_lr * mean(delta), weighted by examples without clipping, uniformly with it
    (under DP the weights would leak)."""

    client_lr: float
    local_epochs: int
    batch_size: int
    server_lr: float = 1.0
    momentum: float = 0.0
    clipping: Clipping | None = None

    @property
    def weighted_by_examples(self) -> bool:  # type: ignore[override]
        return self.clipping is None

    @property
    def message_bound(self) -> float | None:
        return None if self.clipping is None else self.clipping.bound

    def client_update(self, task: ClientTask) -> ClientUpdate:
        x_local, loss, _ = task.objective.sgd(
            task.x, self.local_epochs, self.client_lr, self.batch_size, task.generator, self.momentum
        )
        delta = x_local - task.x
        if self.clipping is not None:
            delta = self.clipping(delta)
        return ClientUpdate(message=delta, state=task.state, train_loss=loss, num_examples=len(task.objective.data))

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, weighted_mean(messages, weights), 1.0)

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        return x + self.server_lr * total / count


def fedavg(
    *, client_lr: float, local_epochs: int, batch_size: int, server_lr: float = 1.0, momentum: float = 0.0
) -> LocalTraining:
    """FedAvg: local SGD, example-weighted mean of the updates."""
    return LocalTraining(
        client_lr=client_lr, local_epochs=local_epochs, batch_size=batch_size, server_lr=server_lr, momentum=momentum
    )


def dp_fedavg(
    *, clip: float, client_lr: float, local_epochs: int, batch_size: int, server_lr: float = 1.0, momentum: float = 0.0
) -> LocalTraining:
    """DP-FedAvg: each update clipped to norm ``clip``, uniform mean (its noise is a post-processor's)."""
    return LocalTraining(
        client_lr=client_lr,
        local_epochs=local_epochs,
        batch_size=batch_size,
        server_lr=server_lr,
        momentum=momentum,
        clipping=Clipping(tau=clip),
    )
