import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fl_dp.operators import Clipping, SmoothedNormalization, clip, clip_rows, smoothed_normalize

vectors = st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50).map(
    lambda xs: torch.tensor(xs, dtype=torch.float64)
)


@given(vectors, st.floats(1e-4, 10))
@settings(max_examples=200, deadline=None)
def test_smoothed_normalization_is_strictly_inside_unit_ball_and_keeps_direction(v, alpha):
    out = smoothed_normalize(v, alpha)
    assert torch.linalg.vector_norm(out) < 1
    assert torch.allclose(out * (alpha + torch.linalg.vector_norm(v)), v)


@given(vectors, st.floats(1e-3, 10))
@settings(max_examples=200, deadline=None)
def test_clip_bounds_norm_and_is_identity_inside_the_ball(v, tau):
    out = clip(v, tau)
    norm = torch.linalg.vector_norm(v)
    assert torch.linalg.vector_norm(out) <= tau * (1 + 1e-9)
    if norm <= tau:
        assert torch.equal(out, v)


def test_clip_rows_matches_clip_per_row():
    rows = torch.randn(7, 5) * torch.tensor([0.1, 1, 3, 10, 0.01, 2, 5]).unsqueeze(1)
    expected = torch.stack([clip(r, 1.5) for r in rows])
    assert torch.allclose(clip_rows(rows, 1.5), expected, atol=1e-6)


def test_operator_bounds_and_bad_parameters():
    assert SmoothedNormalization(alpha=0.1).bound == 1.0
    assert Clipping(tau=2.5).bound == 2.5
    for bad in (0.0, -1.0):
        for make in (lambda b: SmoothedNormalization(alpha=b), lambda b: Clipping(tau=b)):
            try:
                make(bad)
            except ValueError:
                continue
            raise AssertionError(f"an operator with parameter {bad} was accepted")


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1.0, 1e6, 1e12, 1e30])
@pytest.mark.parametrize("dim", [1, 7, 18_474])
def test_bounds_hold_exactly_in_float32_at_extreme_alpha_over_norm(scale, dim):
    from fl_dp.operators import clip, smoothed_normalize

    generator = torch.Generator().manual_seed(dim)
    v = (torch.randn(dim, generator=generator) * scale).float()
    for alpha in (1e-12, 1e-6, 0.1):
        out = smoothed_normalize(v, alpha)
        assert out.dtype == torch.float32
        assert float(torch.linalg.vector_norm(out.double())) < 1.0
    for tau in (1e-3, 1.0, 7.0):
        out = clip(v, tau)
        assert out.dtype == torch.float32
        assert float(torch.linalg.vector_norm(out.double())) <= tau
