"""Server checkpoints: one atomic file a run resumes from with the same trajectory.

A checkpoint holds what the rounds so far determined and nothing a config does not: the global
vector, the algorithm's server state, the privacy ledger, the cohort RNG's state, the metrics
rows and, for the in-process loop, its clients' states (on Flower they live on the clients).
It is read with ``torch.load(weights_only=True)`` (tensors and plain containers only, so a file
cannot run code) and checked field by field before anything of it is used.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, TypeGuard

import torch

from fl_dp.config import ConfigError, RunConfig
from fl_dp.privacy import PrivacyLedger

log = logging.getLogger("fl_dp")

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


def run_dir(cfg: RunConfig) -> Path:
    """results-dir/<run-name or strategy>, created; a ConfigError naming results-dir where it cannot be."""
    path = checkpoint_path(cfg).parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise results_dir_error(cfg, path, err) from None
    for table in (path.parent / f"{path.name}.csv", path.parent / f"{path.name}.png"):  # written after the last round
        if table.exists() and not table.is_file():
            raise results_dir_error(cfg, table, IsADirectoryError(21, "not a file"))
    return path


def results_dir_error(cfg: RunConfig, path: Path, err: OSError) -> ConfigError:
    """The error for a run file that cannot be written (it names ``results-dir``)."""
    return ConfigError(f"results-dir {cfg.results_dir!r}: cannot write {path} ({type(err).__name__}: {err.strerror or err})")


#: how long a server waits for another server of its run to end before it refuses to start
RUN_LOCK_WAIT_SECONDS = 30.0
RUN_LOCK_POLL_SECONDS = 1.0


def run_lock_path(cfg: RunConfig) -> Path:
    """results-dir/<run>/lock: held by the one process that writes the run's checkpoint and ledger."""
    return checkpoint_path(cfg).with_name("lock")


class RunFiles:
    """The exclusive right of this process to write a run's checkpoint and ledger journal.

    Two servers of one run (a run resubmitted with ``resume = true`` while the first still runs:
    interrupting ``flwr run`` leaves its run going on the SuperLink, and a simulation's process goes
    on to the end even when its SuperLink is killed) would each overwrite the other's ledger journal,
    and the releases of one would be missing from the accounting the next resume reads. The lock is
    ``flock`` on ``results-dir/<run>/lock``, so the kernel drops it when its process ends, however it
    ends; a second server waits :data:`RUN_LOCK_WAIT_SECONDS` for that (a stopped run's process ends
    at its next call or heartbeat), then refuses to start. Within one process the holds are counted
    (a test or notebook may build a run's server again while an earlier one is still referenced).
    """

    _held: dict[Path, tuple[IO[str], int]] = {}
    _mutex = threading.Lock()

    def __init__(self, cfg: RunConfig) -> None:
        self.holding = False
        run_dir(cfg)
        self.path = run_lock_path(cfg).resolve()
        with self._mutex:
            file, count = self._held.get(self.path, (None, 0))
            if file is None:
                try:
                    file = open(self.path, "a+")  # noqa: SIM115 - held open for the run; closed by release
                except OSError as err:
                    raise results_dir_error(cfg, self.path, err) from None
                self._lock(self.path, file)
            self._held[self.path] = (file, count + 1)
        self.holding = True

    @staticmethod
    def _lock(path: Path, file: IO[str]) -> None:
        deadline, waited = time.monotonic() + RUN_LOCK_WAIT_SECONDS, False
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                file.seek(0)
                holder = "".join(c for c in file.read(40) if c.isdigit()) or "?"  # the pid its holder wrote
                if time.monotonic() < deadline:
                    # a stopped run's process ends at its next call to the SuperLink or its next heartbeat
                    if not waited:
                        log.warning(
                            "%s is held by process %s, another server of this run: waiting up to %.0f s for it to end",
                            path.parent,
                            holder,
                            RUN_LOCK_WAIT_SECONDS,
                        )
                    waited = True
                    time.sleep(min(RUN_LOCK_POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
                    continue
                file.close()
                raise ConfigError(
                    f"{path.parent} is in use by another server of this run (process {holder}): two servers writing one "
                    "run's checkpoint and privacy ledger would drop each other's releases from the accounting. A run goes "
                    "on after `flwr run` is interrupted, and a simulation's even after its SuperLink is killed: stop it "
                    f"(flwr stop <run-id>, or end process {holder}) and resume, or set another run-name"
                ) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()

    def release(self) -> None:
        """Give up this hold; the lock goes when the process's last hold of the run goes."""
        if not self.holding:
            return
        self.holding = False
        with self._mutex:
            file, count = self._held.pop(self.path)
            if count > 1:
                self._held[self.path] = (file, count - 1)
            else:
                fcntl.flock(file, fcntl.LOCK_UN)
                file.close()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001, S110 - at interpreter exit; the kernel drops the lock anyway
            pass


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


def ledger_summary(ledger: PrivacyLedger) -> list[float]:
    """(max epsilon, mean epsilon, number of clients) of ``ledger``: written beside it in a
    checkpoint and the journal, so that a ledger edited alone does not pass a resume."""
    return [*ledger.summary(), float(ledger.num_clients)]


def check_ledger_summary(ledger: PrivacyLedger, recorded: Any, where: str) -> None:
    """The ledger's :func:`ledger_summary` (or its first two entries) must be what the run wrote
    beside it: a ledger edited alone (a client's history shortened or removed, to charge it less)
    is refused. (Without a secret key a file cannot prove itself; an edit of every field that
    agrees passes, and the docs say so.)"""
    computed = ledger_summary(ledger)
    if not (isinstance(recorded, list) and len(recorded) in (2, 3)):
        raise ValueError(f"ledger: no epsilon summary in {where}")
    if not all(isinstance(v, float) and math.isclose(v, c, rel_tol=1e-9, abs_tol=1e-12) for v, c in zip(recorded, computed)):
        shown = ", ".join(f"{c:.6g}" for c in computed[: len(recorded)])
        raise ValueError(f"ledger: its epsilon summary ({shown}) is not the one in {where} ({recorded})")


def check_ledger_grows(later: PrivacyLedger, earlier: PrivacyLedger) -> None:
    """A later ledger charges every client of an earlier one at least as much (a ledger only grows)."""
    for client, epsilon in earlier.epsilons().items():
        if not later.epsilon(client) >= epsilon * (1 - 1e-9):
            raise ValueError(f"ledger: {client} is charged less than in the checkpoint it follows")


def is_plain_tensor(value: Any, dtype: torch.dtype, shape: tuple[int, ...] | None = None) -> TypeGuard[torch.Tensor]:
    """Whether ``value`` is an ordinary finite CPU tensor of ``dtype`` (and ``shape``): what a
    checkpoint's vectors are. ``torch.load(weights_only=True)`` also hands back what none of them is
    and what fails far from the file (a Parameter recording gradients, a sparse, meta or CUDA tensor)."""
    return (
        type(value) is torch.Tensor
        and value.layout == torch.strided
        and value.device.type == "cpu"
        and not value.requires_grad
        and value.dtype == dtype
        and (shape is None or tuple(value.shape) == shape)
        and bool(torch.isfinite(value).all())
    )


def rng_to_list(state: tuple[Any, ...]) -> list[Any]:
    """A ``random.Random`` state as plain lists (what a checkpoint holds)."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_from_list(saved: Any) -> tuple[Any, ...]:
    """The ``random.Random`` state of :func:`rng_to_list`'s lists; ValueError if it is not one."""
    if not (
        isinstance(saved, list) and len(saved) == 3 and isinstance(saved[1], list) and all(isinstance(v, int) for v in saved[1])
    ):
        raise ValueError("the cohort RNG state is malformed")
    probe = random.Random()
    try:
        probe.setstate((saved[0], tuple(saved[1]), saved[2]))
    except (ValueError, TypeError, OverflowError) as err:  # a word outside 32 bits, a wrong version
        raise ValueError(f"the cohort RNG state is malformed ({err})") from None
    return probe.getstate()


def is_metrics_row(row: Any, server_round: int) -> bool:
    """A checkpointed metrics row of ``server_round``: names to plain values (what
    :meth:`fl_dp.server.ServerCore._close_round` writes), text only in the text columns, its counts
    whole numbers a table column holds (a forged 2^70, inf or string there broke the table at the
    run's end, after the rounds had run)."""
    from fl_dp.results import INTEGER_COLUMNS, TEXT_COLUMNS  # here: clients import this module, and results loads pandas

    def plain(key: Any, value: Any) -> bool:
        if not isinstance(key, str) or isinstance(value, bool):
            return False
        if key in TEXT_COLUMNS:
            return isinstance(value, str)
        if key in INTEGER_COLUMNS:  # a count, or NaN / a whole float where Flower's records made it one
            if isinstance(value, float) and (math.isnan(value) or value.is_integer()):
                return math.isnan(value) or 0 <= value < 2**63
            return isinstance(value, int) and 0 <= value < 2**63
        if isinstance(value, int):
            return -(2**63) <= value < 2**63
        return isinstance(value, float)

    return isinstance(row, dict) and row.get("round") == server_round and all(plain(k, v) for k, v in row.items())
