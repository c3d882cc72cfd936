"""Server checkpoints: one atomic file a run resumes from with the same trajectory.

A checkpoint holds what the rounds so far determined and nothing a config does not: the global
vector, the algorithm's server state, the privacy ledger, the cohort RNG's state, the metrics
rows and, for the in-process loop, its clients' states (on Flower they live on the clients).
It is read with ``torch.load(weights_only=True)`` (tensors and plain containers only, so a file
cannot run code) and checked field by field before anything of it is used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fl_dp.config import ConfigError, RunConfig

FORMAT = "fl-dp-checkpoint/1"
#: keys a resumed run may change: how long, how often it checkpoints, how patiently it waits
RESUMABLE_CHANGES = frozenset(
    {
        "num-server-rounds",
        "resume",
        "checkpoint-every",
        "round-timeout",
        "node-wait-timeout",
        "min-clients-per-round",
        "eval-every",
        "evaluation-clients",
        "verbose",
    }
)


def checkpoint_path(cfg: RunConfig) -> Path:
    """results-dir/<run-name or strategy>/checkpoint."""
    return Path(cfg.results_dir) / cfg.label / "checkpoint"


def ledger_journal_path(cfg: RunConfig) -> Path:
    """results-dir/<run>/ledger: the privacy ledger after every round (a checkpoint is every k)."""
    return checkpoint_path(cfg).with_name("ledger")


def config_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_flwr().items() if k not in RESUMABLE_CHANGES}


def atomic_save(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a crash leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` as an fl-dp checkpoint, atomically."""
    atomic_save(path, {"format": FORMAT, **payload})


def checkpoint_error(path: Path, reason: str) -> ConfigError:
    """The error a resume is refused with (it names the ``resume`` key and the file)."""
    return ConfigError(f"resume: checkpoint {path}: {reason}")


def read_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any]:
    """The checkpoint at ``path`` for a run of ``cfg``; ConfigError (naming ``resume``) if it
    cannot be read, is not an fl-dp checkpoint, or was written by a run of another config."""

    def fail(reason: str) -> ConfigError:
        return checkpoint_error(path, reason)

    try:
        payload = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is refused with its reason
        raise fail(f"unreadable ({type(err).__name__}: {err})"[:400]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise fail(f"not an {FORMAT} file")
    saved = payload.get("config")
    if not isinstance(saved, dict):
        raise fail("no config")
    wanted = config_fingerprint(cfg)
    differ = sorted(str(k) for k in set(saved) | set(wanted) if not _same_value(saved.get(k), wanted.get(k)))
    if differ:
        raise fail(f"written by a run with other values of {', '.join(differ)}")
    completed = payload.get("round")
    if not isinstance(completed, int) or not 0 <= completed <= cfg.num_server_rounds:
        raise fail(f"round {completed!r} outside [0, num-server-rounds={cfg.num_server_rounds}]")
    return payload


def _same_value(saved: Any, wanted: Any) -> bool:
    """Whether a checkpoint's config value is this run's: of the same plain type and equal (a
    forged file may hold anything where a value belongs)."""
    return type(saved) is type(wanted) and isinstance(saved, (str, int, float, bool)) and saved == wanted
