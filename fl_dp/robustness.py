"""Perturbations for robustness experiments: heavy-tailed gradient noise and sign-flipping clients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fl_dp.compressors import SparseVector
from fl_dp.wire import Payload, SignVector

NOISE_KINDS = ("none", "student-t", "pareto")


@dataclass(frozen=True)
class HeavyTailedNoise:
    """Zero-mean noise whose moments are finite only below ``kappa`` (in (1, 2]: infinite variance below 2).

    ``student-t``: Student's t with kappa degrees of freedom. ``pareto``: a random sign times a
    Lomax(kappa) variable, centred. Both scaled by ``scale``.
    """

    kind: str
    kappa: float
    scale: float

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS[1:]:
            raise ValueError(f"unknown gradient noise {self.kind!r}; choose student-t or pareto")
        if not 1 < self.kappa <= 2:
            raise ValueError(f"grad-noise-kappa must be in (1, 2], got {self.kappa}")
        if self.scale <= 0:
            raise ValueError(f"grad-noise-scale must be positive, got {self.scale}")

    def sample(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if self.kind == "student-t":
            draws = rng.standard_t(self.kappa, size=shape)
        else:
            magnitude = rng.pareto(self.kappa, size=shape)
            draws = rng.choice([-1.0, 1.0], size=shape) * magnitude  # symmetric, so centred
        return torch.from_numpy(draws.astype(np.float32)) * self.scale


class NoisyGradients:
    """An objective whose stochastic gradients carry extra heavy-tailed noise."""

    def __init__(self, objective, noise: HeavyTailedNoise) -> None:
        self._objective = objective
        self._noise = noise

    def __getattr__(self, name: str):
        return getattr(self._objective, name)

    def stochastic_gradient(self, x: torch.Tensor, batch_size: int, generator: torch.Generator | None):
        loss, grad = self._objective.stochastic_gradient(x, batch_size, generator)
        if generator is None:
            raise ValueError("heavy-tailed gradient noise needs the client's seeded generator")
        return loss, grad + self._noise.sample(grad.shape, generator)

    def sgd(
        self, x: torch.Tensor, epochs: int, lr: float, batch_size: int, generator: torch.Generator | None, momentum: float = 0.0
    ) -> tuple[torch.Tensor, float, int]:
        """Local SGD (FedAvg, DP-FedAvg) whose every minibatch gradient carries the noise."""
        if generator is None:
            raise ValueError("heavy-tailed gradient noise needs the client's seeded generator")
        return self._objective.sgd(
            x, epochs, lr, batch_size, generator, momentum, gradient_noise=lambda shape: self._noise.sample(shape, generator)
        )


def flip(message: Payload, factor: float = -1.0) -> Payload:
    """What a Byzantine client sends instead of ``message``: ``factor`` times it (-1: sign flipping;
    -1000: the large-value attack). Of a sign message the bits are negated and its scale (EF-sign's
    one float) multiplied by ``|factor|``: a majority vote reads the bits only."""
    if isinstance(message, SignVector):
        return SignVector(-message.signs, abs(factor) * message.scale)
    if isinstance(message, SparseVector):
        return SparseVector(factor * message.values, message.indices, message.dim)
    return factor * message


#: the factor each attack multiplies a Byzantine client's message by
BYZANTINE_ATTACKS = {"sign-flip": -1.0, "large": -1000.0}


def trimmed_mean(messages: list[torch.Tensor], trim_fraction: float) -> torch.Tensor:
    """Coordinate-wise mean after dropping the floor(trim_fraction * n) largest and smallest values."""
    stacked = torch.stack(messages)
    trim = int(trim_fraction * len(messages))
    if trim == 0:
        return stacked.mean(0)
    ordered = stacked.sort(dim=0).values
    return ordered[trim : len(messages) - trim].mean(0)


def coordinate_median(messages: list[torch.Tensor]) -> torch.Tensor:
    """Coordinate-wise median (the mean of the two middle values for an even count)."""
    return torch.stack(messages).quantile(0.5, dim=0) if messages[0].numel() else messages[0]


AGGREGATORS = ("mean", "trimmed-mean", "median")


def robust_mean(messages: list[torch.Tensor], aggregator: str, trim_fraction: float) -> torch.Tensor:
    """The round's messages combined by ``aggregator`` (Yin et al. 2018's coordinate-wise rules)."""
    if aggregator == "trimmed-mean":
        return trimmed_mean(messages, trim_fraction)
    if aggregator == "median":
        return coordinate_median(messages)
    if aggregator == "mean":
        return torch.stack(messages).mean(0)
    raise ValueError(f"unknown aggregator {aggregator!r}; choose one of {', '.join(AGGREGATORS)}")


def is_byzantine(partition_id: int, num_clients: int, fraction: float) -> bool:
    """The first round(fraction * num_clients) clients are the faulty ones."""
    return partition_id < round(fraction * num_clients)
