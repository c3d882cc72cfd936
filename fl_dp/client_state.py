"""A client's state on its own disk: survives a SuperNode restart and a server resumed from a checkpoint.

The state (error-feedback g_i, momentum m_i, the client's own privacy ledger) never leaves the
client. One file per run and partition holds the current state, the round it was trained in, the
Flower run it belongs to and, for a resumed server, the state as of the last checkpoint round:

- same Flower run (the SuperNode restarted): the current state;
- a new run that resumes the server after round R (``resumed-from`` = R in the request): the
  current state if it was trained at round <= R, else the one kept for checkpoint round R;
  anything else would not be the state the server's checkpoint assumes, and is dropped (logged);
- a new run from round 1: nothing (a fresh run's clients start empty).

Whichever algorithm state a resumed run restores, the client's own privacy ledger is the latest
it wrote: a server that names an earlier round cannot make the client forget releases.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from fl_dp.checkpoint import atomic_save, config_fingerprint, is_plain_tensor
from fl_dp.config import RunConfig
from fl_dp.privacy import PrivacyLedger, Release
from fl_dp.wire import LEDGER_STATE

log = logging.getLogger("fl_dp")

State = dict[str, torch.Tensor]


def check_ledger_rows(rows: Any) -> torch.Tensor:
    """``rows`` if they are a client's own ledger (:func:`ledger_releases`); else ValueError saying why."""
    ledger_releases(rows)
    return rows


def ledger_releases(rows: Any) -> list[Release]:
    """The releases of a client's own ledger rows: float64 rows of a :class:`Release` each (noise
    multiplier 0 or in [1e-4, 1e6], sample rate in (0, 1], whole steps >= 1); else ValueError saying why."""
    if not (is_plain_tensor(rows, torch.float64) and rows.dim() == 2 and rows.shape[1] == 3):
        raise ValueError(f"{LEDGER_STATE!r} is not finite float64 rows of (noise multiplier, sample rate, steps)")
    steps = rows[:, 2]
    if not (steps == steps.round()).all():
        raise ValueError(f"{LEDGER_STATE!r} holds a row that is not a release")
    releases = []
    for noise, rate, whole_steps in rows.tolist():
        try:
            releases.append(Release(noise, rate, int(whole_steps)))
        except ValueError as err:
            raise ValueError(f"{LEDGER_STATE!r} holds a row that is not a release ({err})") from None
    return releases


def ledger_rows(releases: list[Release]) -> torch.Tensor:
    """The rows of ``releases``; consecutive releases of one mechanism share a row (their steps
    added, as :meth:`PrivacyLedger.record` merges them), so the rows stay few over a long run."""
    ledger = PrivacyLedger(1e-5)  # delta does not enter the rows
    for release in releases:
        ledger.record("self", release)
    return torch.tensor([[r.noise_multiplier, r.sample_rate, r.steps] for r in ledger.releases("self")], dtype=torch.float64)


def ledger_with(rows: torch.Tensor, release: Release) -> torch.Tensor:
    """``rows`` with ``release`` added (:func:`ledger_rows`)."""
    return ledger_rows([*ledger_releases(rows), release])


def check_state(state: Any, dim: int) -> State:
    """``state`` if it is a client state of a model of ``dim`` parameters: each algorithm vector
    (g_i, m_i, e_i) finite float32 of ``dim`` entries, the own ledger as :func:`check_ledger_rows`
    says; else ValueError saying why. What a client trains from, wherever it was kept."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError("a client state maps names to tensors")
    for key, value in state.items():
        if key == LEDGER_STATE:
            check_ledger_rows(value)
        elif not is_plain_tensor(value, torch.float32, (dim,)):
            raise ValueError(f"{key!r} is not a finite float32 vector of {dim} entries")
    return state


def _fingerprint(cfg: RunConfig) -> str:
    return hashlib.sha256(json.dumps(config_fingerprint(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


class ClientStateStore:
    """``directory/<run-name or strategy>/partition-<id>.pt`` for one client of one run."""

    def __init__(self, directory: str | Path, cfg: RunConfig, partition_id: int) -> None:
        self.cfg = cfg
        self.path = Path(directory) / cfg.label / f"partition-{partition_id}.pt"
        self._fingerprint = _fingerprint(cfg)

    def restore(self, run_id: int, resumed_from: int) -> State:
        """The state this client should train from in run ``run_id`` (see the module docstring)."""
        record = self._read()
        if record is None:
            return {}
        latest = record["state"]
        if record["run"] != run_id and resumed_from == 0:
            return {}  # a fresh run
        if record["run"] == run_id or record["trained"] <= resumed_from:
            state = latest
        elif record["boundary"] == resumed_from:
            state = dict(record["at-boundary"])
        else:
            log.warning(
                "client state %s: trained at round %d, no copy as of round %d where the server resumed; starting empty",
                self.path,
                record["trained"],
                resumed_from,
            )
            state = {}
        if LEDGER_STATE in latest:
            state = {**state, LEDGER_STATE: latest[LEDGER_STATE]}
        return state

    def save(self, run_id: int, server_round: int, before: State, after: State) -> None:
        """Record ``after`` as the state trained at ``server_round`` (``before`` is the state it
        started from: kept as the state as of the last checkpoint round before this one)."""
        record = self._read()
        boundary, at_boundary = (record["boundary"], record["at-boundary"]) if record and record["run"] == run_id else (-1, {})
        every = self.cfg.checkpoint_every
        if every > 0:
            last_checkpoint = (server_round - 1) // every * every
            trained_before = record["trained"] if record and record["run"] == run_id else 0
            if last_checkpoint >= trained_before:
                boundary, at_boundary = last_checkpoint, before
        atomic_save(
            self.path,
            {
                "fingerprint": self._fingerprint,
                "run": run_id,
                "trained": server_round,
                "state": after,
                "boundary": boundary,
                "at-boundary": at_boundary,
            },
        )

    def _read(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            record = torch.load(self.path, weights_only=True)
            if not (isinstance(record, dict) and record.get("fingerprint") == self._fingerprint):
                log.warning("client state %s: written by another run config; ignored", self.path)
                return None
            for key in ("state", "at-boundary"):
                if not (isinstance(record[key], dict) and all(isinstance(v, torch.Tensor) for v in record[key].values())):
                    raise ValueError(f"{key} is not a dict of tensors")
            if not all(isinstance(record[key], int) for key in ("run", "trained", "boundary")):
                raise ValueError("run, trained and boundary must be integers")
            return record
        except Exception as err:  # noqa: BLE001 - a damaged file costs the state, never the client
            log.warning("client state %s unreadable (%s: %s); starting empty", self.path, type(err).__name__, err)
            return None
