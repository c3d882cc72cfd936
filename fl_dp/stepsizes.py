"""Theory step sizes and the smoothness constants they need."""

from __future__ import annotations

import math

import torch


def ef21_stepsize(L: float, L_tilde: float, k: int, d: int) -> float:
    """EF21's step size 1 / (L + L_tilde sqrt(B / theta)) for a top-k-like compressor with alpha = k/d.

    t = -1 + sqrt(1 / (1 - alpha)), theta = 1 - (1 - alpha)(1 + t), B = (1 - alpha)(1 + 1/t);
    with k = d (no compression) it is 1 / L.
    """
    if not (L > 0 and L_tilde >= 0):
        raise ValueError(f"need L > 0 and L_tilde >= 0, got {L}, {L_tilde}")
    if not 1 <= k <= d:
        raise ValueError(f"need 1 <= k <= d, got k={k}, d={d}")
    a = k / d
    if a == 1:
        return 1.0 / L
    t = -1 + math.sqrt(1 / (1 - a))
    theta = 1 - (1 - a) * (1 + t)
    B = (1 - a) * (1 + 1 / t)
    return 1.0 / (L + L_tilde * math.sqrt(B / theta))


def _gram(features: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """A^T A / m of the flattened features, with the constant feature appended for the bias."""
    a = features.double().flatten(1)
    if bias:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
    return a.T @ a / len(a)


def _logistic_bound(gram: torch.Tensor, regularizer_lambda: float) -> float:
    # logistic Hessian <= A^T A / (4m); |d^2/dw^2 w^2/(1 + w^2)| = |2 - 6w^2| / (1 + w^2)^3 <= 2
    return float(torch.linalg.eigvalsh(gram).max()) / 4 + 2 * regularizer_lambda


def logistic_smoothness(features: torch.Tensor, regularizer_lambda: float, bias: bool = True) -> float:
    """L of w -> mean_j log(1 + exp(-y_j a_j.w)) + lambda sum_k w_k^2 / (1 + w_k^2)."""
    return _logistic_bound(_gram(features, bias), regularizer_lambda)


def ef21_logistic_constants(client_features: list[torch.Tensor], regularizer_lambda: float) -> tuple[float, float]:
    """(L, L_tilde) for f = mean_i f_i with f_i the regularised logistic loss on client i's features.

    L bounds f's smoothness through the mean of the clients' Hessian bounds; L_tilde = sqrt(mean_i L_i^2).
    """
    grams = [_gram(x) for x in client_features]
    L = _logistic_bound(torch.stack(grams).mean(0), regularizer_lambda)
    L_tilde = math.sqrt(sum(_logistic_bound(g, regularizer_lambda) ** 2 for g in grams) / len(grams))
    return L, L_tilde
