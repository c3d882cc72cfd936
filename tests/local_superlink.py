"""The detached simulation SuperLink that `flwr run` starts for an FLWR_HOME, found by its log file."""

import subprocess
from pathlib import Path


def superlinks_of(flwr_home) -> list[int]:
    """PIDs of the `flower-superlink` processes logging under ``flwr_home``/local-superlink."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmdline and f"{flwr_home}/local-superlink" in cmdline:
            found.append(int(proc.name))
    return found


def stop_superlinks_of(flwr_home) -> None:
    for pid in superlinks_of(flwr_home):
        subprocess.run(["kill", str(pid)], check=False)
