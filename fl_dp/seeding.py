"""Seeds derived from a run's seed and a stream of integers."""

from __future__ import annotations

import numpy as np


def seed_of(*entropy: int) -> int:
    """A 63-bit seed from non-negative integers, through NumPy's SeedSequence (well mixed, stable
    across processes and Python versions, unlike ``hash()``)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
