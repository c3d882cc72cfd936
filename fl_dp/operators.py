"""Norm-bounding operators applied to a client's vector before it is released.

Each operator maps any vector into a ball of known radius (``bound``), which is
what makes the Gaussian mechanism's sensitivity finite. Operators take ``(v, generator)``
like the compressors of :mod:`fl_dp.compressors`, so a rule calls either the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: a result that rounding in its own dtype would put within this relative margin of the bound
#: is shrunk to it, so the bound the noise is calibrated for holds exactly in float32
ROUNDING_MARGIN = 1e-6


def _within(out: torch.Tensor, bound: float) -> torch.Tensor:
    """``out`` unchanged if its norm (of its own entries, computed in float64) is at most
    bound (1 - ROUNDING_MARGIN), else rescaled to that norm."""
    limit = bound * (1 - ROUNDING_MARGIN)
    norm = float(torch.linalg.vector_norm(out.double()))
    if norm <= limit:
        return out
    return (out.double() * (limit / norm)).to(out.dtype)


def smoothed_normalize(v: torch.Tensor, alpha: float) -> torch.Tensor:
    """Norm_alpha(v) = v / (alpha + ||v||); its norm is strictly below 1 in the returned dtype.

    Computed in float64: in float32, alpha / ||v|| below the rounding unit gives norm 1 + 1e-6.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    v64 = v.double()
    return _within((v64 / (alpha + torch.linalg.vector_norm(v64))).to(v.dtype), 1.0)


def clip(v: torch.Tensor, tau: float) -> torch.Tensor:
    """clip_tau(v) = min(1, tau / ||v||) v; its norm is at most tau in the returned dtype."""
    if tau <= 0:
        raise ValueError(f"clipping threshold must be positive, got {tau}")
    norm = float(torch.linalg.vector_norm(v.double()))
    if norm <= tau:  # the entries themselves are inside the ball: nothing to round
        return v.clone()
    return _within((v.double() * (tau / norm)).to(v.dtype), tau)


def clip_rows(per_sample: torch.Tensor, tau: float) -> torch.Tensor:
    """Clip every row of a (batch, d) matrix to norm at most tau."""
    if tau <= 0:
        raise ValueError(f"clipping threshold must be positive, got {tau}")
    norms = torch.linalg.vector_norm(per_sample, dim=1, keepdim=True)
    return per_sample * torch.clamp(tau / (norms + 1e-12), max=1.0)


def identity(v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The vector itself: the operator of plain distributed SGD (no bound)."""
    return v


@dataclass(frozen=True, kw_only=True)
class SmoothedNormalization:
    """Norm_alpha(v), the operator of alpha-NormEC (outputs of norm < 1)."""

    alpha: float

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    @property
    def bound(self) -> float:
        return 1.0

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return smoothed_normalize(v, self.alpha)


@dataclass(frozen=True, kw_only=True)
class Clipping:
    """clip_tau(v): the increment of Clip21 and the update clipping of DP-FedAvg."""

    tau: float

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"clipping threshold must be positive, got {self.tau}")

    @property
    def bound(self) -> float:
        return self.tau

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clip(v, self.tau)
