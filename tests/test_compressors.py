import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_dp.compressors import Identity, RandK, SparseVector, TopK, build_compressor, pack_signs, unpack_signs

vectors = st.integers(2, 200).flatmap(
    lambda d: st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=d, max_size=d)
).map(lambda xs: torch.tensor(xs, dtype=torch.float32))


@given(vectors, st.data())
@settings(max_examples=300, deadline=None)
def test_top_k_is_contractive_with_alpha_k_over_d(v, data):
    k = data.draw(st.integers(1, v.numel()))
    out = TopK(k=k)(v).to_dense()
    error = torch.sum((out.double() - v.double()) ** 2)
    assert error <= (1 - k / v.numel()) * torch.sum(v.double() ** 2) + 1e-6
    assert (out != 0).sum() <= k


@given(vectors, st.data())
@settings(max_examples=100, deadline=None)
def test_rand_k_contraction_holds_in_expectation(v, data):
    k = data.draw(st.integers(1, v.numel()))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    compressor = RandK(k=k)
    errors = [torch.sum((compressor(v, generator).to_dense() - v).double() ** 2) for _ in range(400)]
    expected = (1 - k / v.numel()) * torch.sum(v.double() ** 2)
    # exact in expectation; the empirical mean of 400 draws stays within a loose statistical band
    assert float(torch.stack(errors).mean()) <= float(expected) * 1.35 + 1e-4


def test_unbiased_rand_k_is_unbiased():
    v = torch.randn(20)
    generator = torch.Generator().manual_seed(1)
    compressor = RandK(k=4, unbiased=True)
    mean = torch.stack([compressor(v, generator).to_dense() for _ in range(20000)]).mean(0)
    # per-coordinate std of the mean: |v_j| sqrt(d/k - 1) / sqrt(20000)
    tolerance = 5 * v.abs() * (20 / 4 - 1) ** 0.5 / 20000**0.5 + 1e-6
    assert torch.all((mean - v).abs() <= tolerance)


def test_identity_sends_everything_dense():
    v = torch.randn(11)
    message = Identity()(v)
    assert message.is_full and message.nbytes == 44
    assert torch.equal(message.to_dense(), v)


def test_sparse_message_counts_values_and_indices_unless_dense_is_cheaper():
    message = TopK(k=3)(torch.arange(10.0))
    assert message.nbytes == 3 * 8
    assert sorted(message.indices.tolist()) == [7, 8, 9]
    # 5 of 10 with int32 indices would cost 40 bytes, as much as dense: sent dense
    assert TopK(k=5)(torch.arange(10.0)).nbytes == 40 and TopK(k=5)(torch.arange(10.0)).is_full


def test_build_compressor_from_ratio_and_errors():
    assert build_compressor("top-k", 1000, ratio=0.05) == TopK(k=50)
    assert build_compressor("rand-k", 1000, k=7) == RandK(k=7)
    assert build_compressor("rand-k-unbiased", 10, k=2) == RandK(k=2, unbiased=True)
    with pytest.raises(ValueError, match="unknown compressor"):
        build_compressor("bottom-k", 10, k=1)
    with pytest.raises(ValueError, match="needs k"):
        build_compressor("top-k", 10)


@given(st.lists(st.sampled_from([-1.0, 1.0]), min_size=1, max_size=100))
def test_sign_packing_round_trips_at_one_bit_per_coordinate(signs):
    v = torch.tensor(signs)
    packed = pack_signs(v)
    assert packed.dtype == np.uint8 and packed.size == (len(signs) + 7) // 8
    assert torch.equal(unpack_signs(packed, len(signs)), v)


def test_sign_packing_rejects_non_signs_and_wrong_sizes():
    with pytest.raises(ValueError):
        pack_signs(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError):
        unpack_signs(np.zeros(3, dtype=np.uint8), 9)


def test_sparse_vector_validates_shapes():
    with pytest.raises(ValueError):
        SparseVector(torch.zeros(2), torch.zeros(3, dtype=torch.int32), 5)
