import numpy as np
import pytest
import torch

from fl_dp.compressors import TopK
from fl_dp.wire import MalformedMessage, SignVector, decode, encode, payload_bytes


def test_dense_sparse_and_sign_messages_round_trip():
    v = torch.randn(10)
    assert torch.equal(decode(encode(v), 10), v)
    sparse = TopK(k=3)(v)
    arrays = encode(sparse)
    assert set(arrays) == {"values", "indices"} and payload_bytes(arrays) == 24
    assert torch.equal(decode(arrays, 10), sparse.to_dense())
    half = TopK(k=6)(v)
    assert set(encode(half)) == {"dense"} and torch.equal(decode(encode(half), 10), half.to_dense())
    signs = torch.tensor([1.0, -1, -1, 1, 1, 1, -1, 1, -1, -1])
    arrays = encode(SignVector(signs))
    assert payload_bytes(arrays) == 2
    assert torch.equal(decode(arrays, 10), signs)


@pytest.mark.parametrize(
    "arrays, reason",
    [
        ({"dense": np.zeros(9, np.float32)}, "entries"),
        ({"dense": np.zeros((2, 5), np.float32)}, "1-D"),
        ({"dense": np.array([1.0] * 9 + [np.nan], np.float32)}, "NaN"),
        ({"dense": np.array([np.inf] + [0.0] * 9, np.float32)}, "NaN or Inf"),
        ({"dense": np.zeros(10, np.int64)}, "dtype"),
        ({"values": np.ones(2, np.float32), "indices": np.array([0, 10], np.int32)}, "out of range"),
        ({"values": np.ones(2, np.float32), "indices": np.array([3, 3], np.int32)}, "repeated"),
        ({"values": np.ones(2, np.float32), "indices": np.array([1], np.int32)}, "indices"),
        ({"signs": np.zeros(1, np.uint8)}, "bytes"),
        ({"weights": np.zeros(10, np.float32)}, "layout"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(arrays, reason):
    with pytest.raises(MalformedMessage, match=reason):
        decode(arrays, 10)
