"""A client's own privacy floor, set by whoever runs the client (the SuperNode's node config).

In a deployment the run config, noise included, is chosen by the side that submits the run: a
client that trusts no server cannot take its privacy from it. The node config keys

    max-epsilon           the most epsilon this node's data spends, over every run it trains in
                          (default: no limit; needs the node's own ``state-dir``)
    privacy-delta         the delta that epsilon is measured at (default 1e-5)
    min-noise-multiplier  the least noise multiplier it adds to anything it releases (default 0)

make the client refuse a run that would release with less noise, a privacy model in which it
adds no noise itself (``central``: the server would have to be trusted), a non-private run, a
federated-evaluation request (a noiseless report of its own examples), and any round whose
release would take what the node has spent past ``max-epsilon``.

What it has spent is counted across runs (:class:`NodeSpending`, a file in the node's
``state-dir``): a run's own ledger starts empty with every new run, and the server submits the
runs, so a budget per run could be renewed by a server that submits another one.
"""

from __future__ import annotations

import fcntl
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl_dp.checkpoint import atomic_save
from fl_dp.client_state import ledger_releases, ledger_rows
from fl_dp.privacy import Release, epsilon_of

NODE_KEYS = ("max-epsilon", "privacy-delta", "min-noise-multiplier")
#: the node config key of the node's own directory (its clients' states, what it has spent)
STATE_DIR_KEY = "state-dir"


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
                    raise ValueError(f"{key} must be a number, got {value!r}")
                values[key.replace("-", "_").replace("privacy_", "")] = float(value)
        if not values:
            return None
        floor = cls(**values)
        if floor.budgeted and not str(node_config.get(STATE_DIR_KEY, "")):
            raise ValueError(
                f"max-epsilon needs the node's own {STATE_DIR_KEY}: what the node has spent is kept there, "
                "across runs and restarts (in memory it would be forgotten by a restart or a new run)"
            )
        return floor

    @property
    def budgeted(self) -> bool:
        """Whether the floor caps what the node spends (a finite ``max-epsilon``)."""
        return math.isfinite(self.max_epsilon)

    def admit(self, privacy_model: str, release: Release | None, history: list[Release]) -> None:
        """Raise :class:`PrivacyRefusal` unless this client may release ``release`` after ``history``
        (what the node has spent: :meth:`NodeSpending.history`)."""
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
                f"max-epsilon {self.max_epsilon:g}: it trains no more"
            )


class NodeSpending:
    """Every release a node computed from one partition's data, over every run, kept in the node's
    own ``state-dir`` (``.privacy-spent/partition-<id>.pt``: float64 rows of noise multiplier,
    sample rate, steps). Only the node config names the directory: a server could point a run's
    ``client-state-dir`` at an empty one."""

    def __init__(self, state_dir: str | Path, partition_id: int) -> None:
        # a dot name: no run-name (the state files' folder) can be it
        self.path = Path(state_dir) / ".privacy-spent" / f"partition-{partition_id}.pt"

    @contextmanager
    def locked(self) -> Iterator[list[Release]]:
        """Hold the node's count for one round and yield it, read once (:meth:`history`): two runs
        on one node cannot both admit a release on the same count, nor lose one another's additions."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.history()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def history(self) -> list[Release]:
        """What was spent so far; :class:`PrivacyRefusal` if the file cannot be read, since
        training on would forget what the node released."""
        if not self.path.exists():
            return []
        try:
            return ledger_releases(torch.load(self.path, weights_only=True))
        except Exception as err:  # noqa: BLE001 - whatever is wrong, the node refuses rather than forgets
            raise PrivacyRefusal(
                f"what this node has spent ({self.path}) cannot be read ({type(err).__name__}: {err}); "
                "it trains no more until the file is restored (removing it forgets every release it counts)"
            ) from None

    def add(self, spent: list[Release], release: Release) -> None:
        """Count ``release`` after ``spent``, the count :meth:`locked` yielded (atomically: a crash
        leaves the previous count whole)."""
        atomic_save(self.path, ledger_rows([*spent, release]))
