"""What a client sends: a dense, sparse or sign vector as named numpy arrays.

The same encoding is used in Flower messages (one ``ArrayRecord``) and in the
in-process loop, so validation and byte counts are identical in both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fl_dp.compressors import SparseVector, pack_signs, unpack_signs


class MalformedMessage(ValueError):
    """A client message that cannot be decoded into a finite vector of the model's size."""


@dataclass(frozen=True)
class SignVector:
    """``scale`` times a +-1 vector, sent as packed bits (and one float32 when scale != 1)."""

    signs: torch.Tensor
    scale: float = 1.0

    def to_dense(self) -> torch.Tensor:
        return self.signs * self.scale


Payload = torch.Tensor | SparseVector | SignVector


def encode(message: Payload) -> dict[str, np.ndarray]:
    """Named arrays that carry ``message`` on the wire."""
    if isinstance(message, SignVector):
        if message.scale == 1.0:
            return {"signs": pack_signs(message.signs)}
        return {"signs": pack_signs(message.signs), "scale": np.array([message.scale], np.float32)}
    if isinstance(message, SparseVector):
        if message.is_full:
            return {"dense": message.to_dense().numpy().astype(np.float32)}
        return {
            "values": message.values.numpy().astype(np.float32),
            "indices": message.indices.numpy().astype(np.int32),
        }
    if isinstance(message, torch.Tensor):
        return {"dense": message.detach().numpy().astype(np.float32)}
    raise TypeError(f"cannot encode a {type(message).__name__}")


def payload_bytes(arrays: dict[str, np.ndarray]) -> int:
    """Bytes of the arrays' data (Flower adds a small header per array on top)."""
    return int(sum(a.nbytes for a in arrays.values()))


def decode(arrays: Any, dim: int, layouts: Collection[frozenset[str]] | None = None) -> torch.Tensor:
    """The dense length-``dim`` vector a message stands for; raises :class:`MalformedMessage`.

    Exactly the dtypes :func:`encode` writes are accepted (float32 values, int32 indices, uint8
    sign bytes, one float32 scale), and with ``layouts`` only those key sets: a strategy whose
    clients send bits never receives a dense vector, nor a scale it did not ask for.
    """
    if not isinstance(arrays, Mapping) or not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise MalformedMessage("a message is a mapping of names to numpy arrays")
    keys = frozenset(arrays)
    if layouts is not None and keys not in layouts:
        raise MalformedMessage(f"layout {sorted(keys)} is not one this strategy's clients send")
    if keys == {"dense"}:
        dense = _as_1d(arrays["dense"], "dense", np.float32)
        if dense.size != dim:
            raise MalformedMessage(f"dense message has {dense.size} entries, the model has {dim}")
        vector = torch.from_numpy(dense.copy())
    elif keys == {"values", "indices"}:
        values = _as_1d(arrays["values"], "values", np.float32)
        indices = _as_1d(arrays["indices"], "indices", np.int32)
        if values.size != indices.size:
            raise MalformedMessage(f"{values.size} values but {indices.size} indices")
        if values.size > dim:
            raise MalformedMessage(f"{values.size} values for a model of {dim}")
        if indices.size and (indices.min() < 0 or indices.max() >= dim):
            raise MalformedMessage(f"indices out of range [0, {dim})")
        if np.unique(indices).size != indices.size:
            raise MalformedMessage("repeated indices")
        sparse = SparseVector(torch.from_numpy(values.copy()), torch.from_numpy(indices.copy()), dim)
        vector = sparse.to_dense()
    elif keys in ({"signs"}, {"signs", "scale"}):
        packed = _as_1d(arrays["signs"], "signs", np.uint8)
        try:
            vector = unpack_signs(packed, dim)
        except ValueError as err:
            raise MalformedMessage(str(err)) from err
        if "scale" in arrays:
            scale = _as_1d(arrays["scale"], "scale", np.float32)
            if scale.size != 1:
                raise MalformedMessage(f"scale must hold one value, got {scale.size}")
            vector = vector * float(scale[0])
    else:
        raise MalformedMessage(f"unknown message layout {sorted(keys)}")
    if not torch.isfinite(vector).all():
        raise MalformedMessage("message holds NaN or Inf")
    return vector


def _as_1d(array: np.ndarray, name: str, dtype: type) -> np.ndarray:
    if array.ndim != 1:
        raise MalformedMessage(f"{name!r} must be 1-D, got shape {array.shape}")
    if array.dtype != np.dtype(dtype):
        raise MalformedMessage(f"{name!r} has dtype {array.dtype}, clients send {np.dtype(dtype)}")
    return array
