"""One-bit messages: sign, stochastic sign, DP sign, error-feedback sign, and the majority vote."""

from __future__ import annotations

import torch


def hard_sign(v: torch.Tensor) -> torch.Tensor:
    """sign(v) in {-1, +1}: zero maps to +1 so that every coordinate fits one bit."""
    return torch.where(v >= 0, 1.0, -1.0).to(torch.float32)


def stochastic_sign(v: torch.Tensor, bound: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """sto-sign: +1 with probability (b + v_j) / (2b), so E[b * q] = v where |v_j| <= b.

    Coordinates beyond the bound are clamped to it (the message is then biased there).
    """
    if bound <= 0:
        raise ValueError(f"sto-sign bound must be positive, got {bound}")
    p_plus = (bound + v.clamp(-bound, bound)) / (2 * bound)
    return torch.where(torch.rand(v.shape, generator=generator) < p_plus, 1.0, -1.0)


def dp_sign(v: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """dp-sign: sign(v + N(0, std^2)), i.e. +1 with probability Phi(v_j / std).

    A post-processing of the Gaussian mechanism, so its privacy is that mechanism's.
    """
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    return hard_sign(v + torch.randn(v.shape, generator=generator) * std)


def scaled_sign(p: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(||p||_1 / d, sign(p)): the compressor of EF-SignSGD (Karimireddy et al. 2019)."""
    return float(p.abs().mean()), hard_sign(p)


def majority_vote(signs: list[torch.Tensor]) -> torch.Tensor:
    """sign(sum_i q_i) per coordinate. Tie rule: a coordinate with as many +1 as -1 votes
    gets 0 (no majority, no step)."""
    if not signs:
        raise ValueError("a vote needs at least one voter")
    return torch.sign(torch.stack(signs).sum(0))
