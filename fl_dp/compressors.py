"""Compressors and the wire formats of compressed vectors.

A compressor maps a dense vector to a :class:`SparseVector` (values + indices)
or, for sign methods, to a :class:`SignVector` (one bit a coordinate). Both know
their exact size on the wire, which is what the metrics count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

FLOAT_BYTES = 4
INDEX_BYTES = 4


@dataclass(frozen=True)
class SparseVector:
    """The non-zero part of a length-``dim`` vector: float32 values at int32 indices."""

    values: torch.Tensor
    indices: torch.Tensor
    dim: int

    def __post_init__(self) -> None:
        if self.values.shape != self.indices.shape or self.values.ndim != 1:
            raise ValueError("values and indices must be 1-D and of equal length")

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.dim, dtype=self.values.dtype)
        dense[self.indices.long()] = self.values
        return dense

    @property
    def is_full(self) -> bool:
        """Sent dense: with indices, half the coordinates or more would cost at least as much."""
        return self.values.numel() * (FLOAT_BYTES + INDEX_BYTES) >= self.dim * FLOAT_BYTES

    @property
    def nbytes(self) -> int:
        if self.is_full:
            return self.dim * FLOAT_BYTES
        return self.values.numel() * (FLOAT_BYTES + INDEX_BYTES)

    @staticmethod
    def from_dense(v: torch.Tensor, indices: torch.Tensor) -> SparseVector:
        indices = indices.to(torch.int32)
        return SparseVector(v[indices.long()].to(torch.float32), indices, v.numel())


def pack_signs(signs: torch.Tensor) -> np.ndarray:
    """Pack a +-1 vector into bits (1 = positive), 8 coordinates a byte."""
    if not torch.all((signs == 1) | (signs == -1)):
        raise ValueError("pack_signs takes a vector of +1/-1 only")
    return np.packbits((signs > 0).numpy().astype(np.uint8))


def unpack_signs(packed: np.ndarray, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_signs`."""
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size != (dim + 7) // 8:
        raise ValueError(f"packed signs must be {(dim + 7) // 8} uint8 bytes for dim={dim}")
    bits = np.unpackbits(packed, count=dim).astype(np.float32)
    return torch.from_numpy(bits * 2.0 - 1.0)


class Compressor(Protocol):
    """A (possibly random) map from a dense vector to a sparse message."""

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> SparseVector: ...


@dataclass(frozen=True, kw_only=True)
class Identity:
    """Sends every coordinate (dense on the wire)."""

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> SparseVector:
        return SparseVector.from_dense(v, torch.arange(v.numel()))


@dataclass(frozen=True, kw_only=True)
class TopK:
    """Keeps the k largest-magnitude coordinates: ||C(v) - v||^2 <= (1 - k/d) ||v||^2."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"top-k needs k >= 1, got {self.k}")

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> SparseVector:
        k = min(self.k, v.numel())
        indices = torch.topk(v.abs(), k, sorted=False).indices
        return SparseVector.from_dense(v, indices)


@dataclass(frozen=True, kw_only=True)
class RandK:
    """Keeps k coordinates drawn uniformly without replacement.

    ``unbiased=False``: contractive, E||C(v) - v||^2 = (1 - k/d) ||v||^2.
    ``unbiased=True``: scaled by d/k so that E C(v) = v (variance d/k - 1).
    """

    k: int
    unbiased: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"rand-k needs k >= 1, got {self.k}")

    def __call__(self, v: torch.Tensor, generator: torch.Generator | None = None) -> SparseVector:
        d = v.numel()
        k = min(self.k, d)
        indices = torch.randperm(d, generator=generator)[:k]
        message = SparseVector.from_dense(v, indices)
        if self.unbiased:
            return SparseVector(message.values * (d / k), message.indices, d)
        return message


def build_compressor(name: str, dim: int, k: int = 0, ratio: float = 0.0) -> Compressor:
    """Compressor from its config name; k from ``k`` or else ``ratio * dim`` (at least 1)."""
    if name == "identity":
        return Identity()
    if k <= 0:
        if not 0 < ratio <= 1:
            raise ValueError(f"compressor {name!r} needs k >= 1 or 0 < compress-ratio <= 1, got k={k}, ratio={ratio}")
        k = max(1, int(round(ratio * dim)))
    if name == "top-k":
        return TopK(k=k)
    if name == "rand-k":
        return RandK(k=k, unbiased=False)
    if name == "rand-k-unbiased":
        return RandK(k=k, unbiased=True)
    raise ValueError(f"unknown compressor {name!r}; choose identity, top-k, rand-k or rand-k-unbiased")
