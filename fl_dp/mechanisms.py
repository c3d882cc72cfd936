"""Noise mechanisms: post-processors that turn a norm-bounded vector into a private release."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fl_dp.privacy import Release


@dataclass(frozen=True)
class GaussianMechanism:
    """Adds N(0, std^2 I) to a vector whose L2 sensitivity is ``sensitivity``.

    ``std = 0`` is the non-private case: the vector passes unchanged and its
    release is accounted with noise multiplier 0 (epsilon = inf).
    """

    std: float
    sensitivity: float

    def __post_init__(self) -> None:
        if self.std < 0:
            raise ValueError(f"noise std must be >= 0, got {self.std}")
        if self.sensitivity <= 0:
            raise ValueError(f"sensitivity must be positive, got {self.sensitivity}")

    @staticmethod
    def from_noise_multiplier(noise_multiplier: float, sensitivity: float) -> "GaussianMechanism":
        return GaussianMechanism(std=noise_multiplier * sensitivity, sensitivity=sensitivity)

    @property
    def noise_multiplier(self) -> float:
        return self.std / self.sensitivity

    def noise(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        if self.std == 0:
            return torch.zeros(shape)
        return torch.randn(shape, generator=generator) * self.std

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return v + self.noise(v.shape, generator)

    def release(self, sample_rate: float = 1.0, steps: int = 1) -> Release:
        return Release(self.noise_multiplier, sample_rate, steps)
