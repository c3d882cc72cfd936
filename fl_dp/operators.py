"""Norm-bounding operators applied to a client's vector before it is released.

Each operator maps any vector into a ball of known radius (``bound``), which is
what makes the Gaussian mechanism's sensitivity finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def smoothed_normalize(v: torch.Tensor, alpha: float) -> torch.Tensor:
    """Norm_alpha(v) = v / (alpha + ||v||); its norm is strictly below 1."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return v / (alpha + torch.linalg.vector_norm(v))


def clip(v: torch.Tensor, tau: float) -> torch.Tensor:
    """clip_tau(v) = min(1, tau / ||v||) v; its norm is at most tau."""
    if tau <= 0:
        raise ValueError(f"clipping threshold must be positive, got {tau}")
    norm = torch.linalg.vector_norm(v)
    if norm <= tau:
        return v.clone()
    return v * (tau / norm)


def clip_rows(per_sample: torch.Tensor, tau: float) -> torch.Tensor:
    """Clip every row of a (batch, d) matrix to norm at most tau."""
    if tau <= 0:
        raise ValueError(f"clipping threshold must be positive, got {tau}")
    norms = torch.linalg.vector_norm(per_sample, dim=1, keepdim=True)
    return per_sample * torch.clamp(tau / (norms + 1e-12), max=1.0)


@dataclass(frozen=True)
class SmoothedNormalization:
    """Norm_alpha(v), the operator of alpha-NormEC (outputs of norm < 1)."""

    alpha: float

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    @property
    def bound(self) -> float:
        return 1.0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return smoothed_normalize(v, self.alpha)


@dataclass(frozen=True)
class Clipping:
    """clip_tau(v): the increment of Clip21 and the update clipping of DP-FedAvg."""

    tau: float

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"clipping threshold must be positive, got {self.tau}")

    @property
    def bound(self) -> float:
        return self.tau

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return clip(v, self.tau)
