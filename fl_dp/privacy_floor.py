"""A client's own privacy floor, set by whoever runs the client (the SuperNode's node config).

In a deployment the run config, noise included, is chosen by the side that submits the run: a
client that trusts no server cannot take its privacy from it. The node config keys

    max-epsilon           the most epsilon this client spends over the run (default: no limit)
    privacy-delta         the delta that epsilon is measured at (default 1e-5)
    min-noise-multiplier  the least noise multiplier it adds to anything it releases (default 0)

make the client refuse a run that would release with less noise, a privacy model in which it
adds no noise itself (``central``: the server would have to be trusted), a non-private run, and
any round whose release would take its own ledger past ``max-epsilon``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fl_dp.privacy import Release, epsilon_of

NODE_KEYS = ("max-epsilon", "privacy-delta", "min-noise-multiplier")


class PrivacyRefusal(RuntimeError):
    """The client will not train: the request would break its own privacy floor."""


@dataclass(frozen=True, kw_only=True)
class PrivacyFloor:
    max_epsilon: float = math.inf
    delta: float = 1e-5
    min_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if not self.max_epsilon > 0:
            raise ValueError(f"max-epsilon must be positive, got {self.max_epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy-delta must be in (0, 1), got {self.delta}")
        if not (self.min_noise_multiplier >= 0 and math.isfinite(self.min_noise_multiplier)):
            raise ValueError(f"min-noise-multiplier must be finite and >= 0, got {self.min_noise_multiplier}")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> PrivacyFloor | None:
        """The floor a SuperNode was started with, or None if it sets none of :data:`NODE_KEYS`."""
        values = {}
        for key in NODE_KEYS:
            if key in node_config:
                value = node_config[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"node config {key} must be a number, got {value!r}")
                values[key.replace("-", "_").replace("privacy_", "")] = float(value)
        return cls(**values) if values else None

    def admit(self, privacy_model: str, release: Release | None, history: list[Release]) -> None:
        """Raise :class:`PrivacyRefusal` unless this client may release ``release`` after ``history``."""
        if privacy_model in ("central", "distributed"):
            raise PrivacyRefusal(
                f"this node has a privacy floor: it adds all of its own noise, so it takes no {privacy_model!r} run "
                "(there the noise is the server's, or shared with the other clients)"
            )
        if release is None or release.noise_multiplier == 0:
            raise PrivacyRefusal("this node has a privacy floor: it takes no run that releases without noise")
        if release.noise_multiplier < self.min_noise_multiplier:
            raise PrivacyRefusal(
                f"the run's noise multiplier {release.noise_multiplier:.4g} is below this node's "
                f"min-noise-multiplier {self.min_noise_multiplier:g}"
            )
        spent = epsilon_of([*history, release], self.delta)
        if spent > self.max_epsilon:
            raise PrivacyRefusal(
                f"this round would take the node's epsilon to {spent:.4g} at delta {self.delta:g}, above its "
                f"max-epsilon {self.max_epsilon:g}: it trains no more in this run"
            )
