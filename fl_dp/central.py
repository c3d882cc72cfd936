"""Central DP: a trusted server bounds each client's message, sums them and adds Gaussian noise once.

Neighbouring relation: add or remove one client's whole data (user level). Each round the
server draws its cohort by Poisson sampling, every connected client independently at rate
q = clients-per-round / num-clients, and releases

    sum_i P_S(m_i) + N(0, (sigma S)^2 I),

P_S the projection onto the L2 ball of radius S (the bound the strategy's operator already
guarantees, enforced again here so that no client, honest rounding or hostile, can exceed it).
Adding or removing one client changes the sum by at most S, so each round is a Poisson
subsampled Gaussian mechanism with noise multiplier sigma at rate q, composed over rounds with
Opacus' RDP accountant; every connected client is charged at rate q every round, sampled or not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from fl_dp.privacy import Release

ClientId = TypeVar("ClientId")

#: projected messages are shrunk this much below S so that float32 rounding cannot push them over it
BOUND_SAFETY = 1e-5


def project_to_ball(v: torch.Tensor, radius: float) -> torch.Tensor:
    """v if ||v|| <= radius (1 - BOUND_SAFETY), else v rescaled to that norm (computed in float64)."""
    limit = radius * (1 - BOUND_SAFETY)
    norm = float(torch.linalg.vector_norm(v.double()))
    if norm <= limit:
        return v
    return (v.double() * (limit / norm)).to(v.dtype)


def poisson_cohort(client_ids: Sequence[ClientId], rate: float, rng: random.Random) -> list[ClientId]:
    """Each client independently with probability ``rate`` (one draw per client, in the given order)."""
    if not 0 < rate <= 1:
        raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
    return [client for client in client_ids if rng.random() < rate]


@dataclass(frozen=True, kw_only=True)
class CentralGaussianSum:
    """The server's post-processor under ``central``: bounded sum + one Gaussian draw."""

    bound: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not self.bound > 0:
            raise ValueError(f"message bound must be positive, got {self.bound}")
        if not self.noise_multiplier >= 0:
            raise ValueError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")

    @property
    def std(self) -> float:
        return self.noise_multiplier * self.bound

    def __call__(self, messages: Sequence[torch.Tensor], dim: int, generator: torch.Generator) -> torch.Tensor:
        """The noised sum of ``messages`` (all of length ``dim``; none gives noise alone)."""
        total = torch.zeros(dim)
        for message in messages:
            total += project_to_ball(message, self.bound)
        if self.std > 0:
            total += torch.randn(dim, generator=generator) * self.std
        return total

    def release(self, sample_rate: float) -> Release:
        """What one round costs each client of the population."""
        return Release(self.noise_multiplier, sample_rate, 1)
