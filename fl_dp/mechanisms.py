"""Noise mechanisms, and client-level local DP as a post-processor of a rule's bounded message.

As in pfl-research, a mechanism is not part of an update rule: the rule's ``client_update``
produces a message in a known L2 ball, and :class:`LocalGaussianNoise` turns it into a private
release afterwards (the rules whose noise is intrinsic, dp-sign and DP-SGD, keep it inside).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fl_dp.privacy import Release

#: the noise of a message of dimension d stays below std * (sqrt(d) + NOISE_TAIL) except with
#: probability exp(-NOISE_TAIL^2 / 2) < 1e-9 (Gaussian concentration of the norm, a 1-Lipschitz map)
NOISE_TAIL = 6.5

#: float32 slack on a rule's bound: a message rounded in float32 may sit this much above it
BOUND_SLACK = 1e-5


@dataclass(frozen=True, kw_only=True)
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
    def from_noise_multiplier(noise_multiplier: float, sensitivity: float) -> GaussianMechanism:
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


@dataclass(frozen=True, kw_only=True)
class LocalGaussianNoise:
    """Client-level local DP: each client noises its own bounded message before it leaves.

    ``bound`` is the rule's message radius S; under replacement of one client's data two
    messages differ by at most 2S, so the mechanism's sensitivity is 2S.
    """

    noise_multiplier: float
    bound: float

    @property
    def mechanism(self) -> GaussianMechanism:
        return GaussianMechanism.from_noise_multiplier(self.noise_multiplier, 2 * self.bound)

    def __call__(self, message: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, Release]:
        """The noised message and the release it is (one round at sample rate 1)."""
        mechanism = self.mechanism
        return mechanism(message, generator), mechanism.release()

    def release(self) -> Release:
        return self.mechanism.release()

    def norm_limit(self, dim: int) -> float:
        """An L2 norm no honest noised message of dimension ``dim`` exceeds (with probability 1 - 1e-9)."""
        return message_norm_limit(self.bound, self.mechanism.std, dim)


def message_norm_limit(bound: float, noise_std: float, dim: int) -> float:
    """A rule's bound (with float32 slack) plus the high-probability norm of its noise."""
    return bound * (1 + BOUND_SLACK) + noise_std * (math.sqrt(dim) + NOISE_TAIL)
