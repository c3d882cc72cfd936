"""The detached simulation SuperLink that `flwr run` starts for an FLWR_HOME, found by its log file."""

import subprocess
from collections.abc import Iterator
from pathlib import Path


def processes(with_environ: bool = False) -> Iterator[tuple[int, str, str]]:
    """(pid, command line, environment) of every process this user can read (environment "" unless
    asked: reading it costs a file per process)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace") if with_environ else ""
        except OSError:
            continue
        yield int(proc.name), cmdline, environ


def superlinks_of(flwr_home) -> list[int]:
    """PIDs of the `flower-superlink` processes logging under ``flwr_home``/local-superlink."""
    return [
        pid for pid, cmdline, _ in processes() if "flower-superlink" in cmdline and f"{flwr_home}/local-superlink" in cmdline
    ]


def stop_superlinks_of(flwr_home) -> None:
    for pid in superlinks_of(flwr_home):
        subprocess.run(["kill", str(pid)], check=False)
