"""Sample-level DP-SGD inside each client, with random sparsification (Zhu and Blaschko 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fl_dp.compressors import SparseVector
from fl_dp.dpsgd import client_noise_multiplier, cooling_rate, epoch_mask, masked_noisy_sum, poisson_batch
from fl_dp.privacy import Release
from fl_dp.rules.base import DENSE, SPARSE, Algorithm, ClientTask, ClientUpdate, State, weighted_mean
from fl_dp.seeding import seed_of
from fl_dp.wire import Payload


@dataclass(frozen=True, kw_only=True)
class DPSGD(Algorithm):
    """Each local epoch e of the run's E = rounds * local_epochs uses one mask, shared by all
    clients (seeded from ``mask_seed`` and e) and dropping r(e) = r* e / (E - 1) of the
    coordinates. Steps: Poisson batch (rate B/N), per-sample gradients, mask, clip to C, sum,
    + mask * N(0, (sigma C)^2), / B, SGD step. The client sends its update x_local - x, which is
    zero off the round's masks: values + indices. Server: x += server_lr * mean(update).
    sigma is set (``noise_multiplier``) or calibrated by the client from its own sample rate.
    """

    client_lr: float
    local_epochs: int
    batch_size: int
    clip: float
    delta: float
    num_rounds: int
    server_lr: float = 1.0
    momentum: float = 0.0
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

    def epoch_masks(self, server_round: int, dim: int) -> list[torch.Tensor]:
        """The 0/1 masks of the round's local epochs (shared by every client, known to the server)."""
        total_epochs = self.num_rounds * self.local_epochs
        epochs = [(server_round - 1) * self.local_epochs + local_epoch for local_epoch in range(self.local_epochs)]
        return [epoch_mask(dim, cooling_rate(self.final_rate, e, total_epochs), seed_of(self.mask_seed, e)) for e in epochs]

    def message_support(self, server_round: int, dim: int) -> torch.Tensor | None:
        """The union of the round's masks: an update is zero off it (None: no mask drops anything)."""
        if self.final_rate == 0:
            return None
        support = torch.stack(self.epoch_masks(server_round, dim)).bool().any(dim=0)
        return None if bool(support.all()) else support

    def client_update(self, task: ClientTask) -> ClientUpdate:
        objective = task.objective
        n = len(objective.data)
        sigma, sample_rate, steps_per_epoch = self.schedule(n)
        expected_batch = sample_rate * n
        x = task.x.clone()
        velocity = torch.zeros_like(x)
        support = torch.zeros_like(x, dtype=torch.bool)
        for mask in self.epoch_masks(task.server_round, x.numel()):
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
        return ClientUpdate(message=message, state=task.state, train_loss=math.nan, num_examples=n, release=release)

    def server_update(self, x: torch.Tensor, state: State, messages: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
        return self.apply_sum(x, state, weighted_mean(messages, weights), 1.0)

    def apply_sum(self, x: torch.Tensor, state: State, total: torch.Tensor, count: float) -> torch.Tensor:
        return x + self.server_lr * total / count


def dp_sgd(
    *,
    clip: float,
    client_lr: float,
    local_epochs: int,
    batch_size: int,
    delta: float,
    num_rounds: int,
    target_epsilon: float = 0.0,
    noise_multiplier: float = 0.0,
    server_lr: float = 1.0,
    momentum: float = 0.0,
    final_rate: float = 0.0,
    mask_seed: int = 0,
) -> DPSGD:
    """DP-SGD in each client (``final_rate`` r* > 0: with random sparsification, dp-sgd-rs)."""
    return DPSGD(
        clip=clip,
        client_lr=client_lr,
        local_epochs=local_epochs,
        batch_size=batch_size,
        delta=delta,
        num_rounds=num_rounds,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        server_lr=server_lr,
        momentum=momentum,
        final_rate=final_rate,
        mask_seed=mask_seed,
    )
