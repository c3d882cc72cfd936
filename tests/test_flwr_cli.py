"""`flwr run .` as a Flower user types it, with the project's environment activated, and the
`flwr ls` / `flwr log` / `flwr stop` commands on the runs it starts."""

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from local_superlink import stop_superlinks_of

ROOT = Path(__file__).parents[1]
VENV = Path(sys.executable).parent.parent
LOCAL_SUPERLINK_PORT = 39091  # fixed by flwr for its managed local SuperLink

pytestmark = pytest.mark.slow


def _port_in_use(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _flwr(flwr_home, command, timeout=600):
    """`command` in a shell where only the project's environment is activated."""
    script = f"source {VENV}/bin/activate && export FLWR_HOME={flwr_home} && cd {ROOT} && {command}"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home()), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=timeout)


def _run_status(flwr_home, run_id):
    listed = _flwr(flwr_home, f"flwr ls --run-id {run_id} --format json", timeout=60)
    return json.loads(listed.stdout)["runs"][0]


@pytest.fixture
def flwr_home(tmp_path):
    if _port_in_use(LOCAL_SUPERLINK_PORT):
        pytest.skip(f"a local SuperLink already listens on 127.0.0.1:{LOCAL_SUPERLINK_PORT}; `flwr run .` would use it")
    home = tmp_path / "flwr-home"
    home.mkdir()
    yield home
    stop_superlinks_of(home)


def test_plain_flwr_run_completes_and_is_listed_logged_and_stoppable(flwr_home, tmp_path):
    results = tmp_path / "results"
    run_config = f"num-server-rounds=2 dataset='synthetic' model='logreg' run-name='cli' results-dir='{results}'"
    # Flower's default federation (2 SuperNodes): num-clients = 0 takes them all
    started = _flwr(flwr_home, f'flwr run . --run-config "{run_config}" --stream')
    output = started.stdout + started.stderr
    assert started.returncode == 0, output[-4000:]
    run_id = re.search(r"run_id `(\d+)`", output).group(1)

    status = _run_status(flwr_home, run_id)
    assert status["status"] == "finished:completed", status
    assert status["fab-id"] == "fl-dp/fl-dp"
    logged = _flwr(flwr_home, f"flwr log {run_id} --show", timeout=60).stdout
    assert "fl-dp: num-clients = 0: the federation's 2 SuperNodes" in logged
    assert "fl-dp: final: test-accuracy=" in logged
    history = pd.read_csv(results / "cli.csv")
    assert list(history["round"]) == [1, 2] and (history["sampled"] == 2).all()

    # a longer run, detached (no --stream): `flwr stop` ends it and `flwr ls` says so
    detached = _flwr(
        flwr_home,
        f"flwr run . --federation-config 'num-supernodes=3' --run-config \"num-server-rounds=100000 dataset='synthetic' "
        f"model='logreg' results-dir='{results}'\"",
    )
    assert detached.returncode == 0, (detached.stdout + detached.stderr)[-4000:]
    long_run = re.search(r"Successfully started run (\d+)", detached.stdout + detached.stderr).group(1)
    deadline = time.monotonic() + 300
    while _run_status(flwr_home, long_run)["status"] != "running":
        assert time.monotonic() < deadline, _run_status(flwr_home, long_run)
        time.sleep(2)
    stopped = _flwr(flwr_home, f"flwr stop {long_run}", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    while not _run_status(flwr_home, long_run)["status"].startswith("finished"):
        assert time.monotonic() < deadline
        time.sleep(2)
    assert _run_status(flwr_home, long_run)["status"] == "finished:stopped"


def test_flowers_runtime_install_can_resolve_the_apps_dependencies(tmp_path):
    """With runtime installation on, the SuperLink `uv sync`s [project].dependencies: they must
    resolve for every Python the project admits (flwr 1.41's exit 608 was requires-python)."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "README.md").write_text("fl-dp\n")
    locked = subprocess.run(
        [sys.executable, "-m", "uv", "lock", "--directory", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert locked.returncode == 0, locked.stderr[-3000:]
    lock = (tmp_path / "uv.lock").read_text()
    assert 'name = "torch"' in lock and 'name = "opacus"' in lock
