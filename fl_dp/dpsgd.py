"""DP-SGD with random sparsification (Zhu & Blaschko 2023), as pure functions.

One step: per-sample gradients -> zero the masked coordinates -> clip each to C -> sum ->
add mask * N(0, sigma^2 C^2) -> divide by the expected batch size. The mask drops
``rate * d`` coordinates, is fixed for an epoch and does not depend on data, so it costs no
privacy; its rate grows over the run by gradual cooling r(e) = r* e / (E - 1).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from fl_dp.privacy import calibrate_noise_multiplier


def cooling_rate(final_rate: float, epoch: int, total_epochs: int) -> float:
    """r(e) = r* e / (E - 1) for e = 0 .. E-1 (0 for a single epoch)."""
    if not 0 <= final_rate < 1:
        raise ValueError(f"sparsification rate must be in [0, 1), got {final_rate}")
    if not 0 <= epoch < total_epochs:
        raise ValueError(f"epoch {epoch} outside [0, {total_epochs})")
    if total_epochs == 1:
        return 0.0
    return final_rate * epoch / (total_epochs - 1)


def epoch_mask(dim: int, rate: float, seed: int) -> torch.Tensor:
    """A 0/1 mask that drops round(rate * dim) coordinates drawn from ``seed`` alone."""
    mask = torch.ones(dim)
    drop = int(round(rate * dim))
    if drop:
        generator = torch.Generator().manual_seed(seed)
        mask[torch.randperm(dim, generator=generator)[:drop]] = 0.0
    return mask


def poisson_batch(num_samples: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of a Poisson-sampled batch: each sample independently with probability ``sample_rate``."""
    return torch.nonzero(torch.rand(num_samples, generator=generator) < sample_rate).flatten()


def masked_noisy_sum(
    per_sample: torch.Tensor, mask: torch.Tensor, clip: float, noise_std: float, generator: torch.Generator | None
) -> torch.Tensor:
    """sum_j clip_C(mask * grad_j) + mask * N(0, noise_std^2): the mask comes before clipping,
    so the clipping budget is spent on the coordinates that are kept."""
    if clip <= 0:
        raise ValueError(f"clipping threshold must be positive, got {clip}")
    total = torch.zeros_like(mask)
    if len(per_sample):
        kept = per_sample if bool(mask.all()) else per_sample * mask
        scale = torch.clamp(clip / (torch.linalg.vector_norm(kept, dim=1) + 1e-12), max=1.0)
        # the clipped rows' sum as one matrix-vector product: no clipped copy of the (batch, d)
        # matrix, which made up most of a step's time at batch 2048
        total = scale @ kept
    return total + mask * torch.randn(mask.shape, generator=generator) * noise_std


@lru_cache(maxsize=256)
def client_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Sample-level sigma of one client: its own sample rate, its steps over all planned rounds."""
    return calibrate_noise_multiplier(target_epsilon, delta, sample_rate, steps)
