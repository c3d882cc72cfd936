"""The scripts themselves: scripts/simulate.sh and scripts/deploy.sh refuse a client count that is
not one, or a bad value of one of their environment variables, before anything starts, and take
their default when the first word is a Flower option; an interrupted simulate.sh leaves no process
behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from local_superlink import processes

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def _bash(command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FL_DP_VENV": str(VENV)}
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script, what", [("simulate.sh", "clients"), ("deploy.sh", "SuperNodes")])
@pytest.mark.parametrize("count", ["0", "-3", "1.5", "", "1e3", "007", "1000000"])
def test_a_count_that_is_not_one_stops_the_script_naming_it(script, what, count):
    done = _bash(f"bash scripts/{script} '{count}' --run-config 'num-server-rounds=1'")
    assert done.returncode == 2
    assert f"scripts/{script}: the number of {what} must be a whole number from 1 to 999999, got '{count}'" in done.stderr
    assert "flwr" not in done.stdout.lower()  # nothing was started


@pytest.mark.parametrize(
    "words, count, given",
    [("", "10", "0"), ("--run-config x", "10", "0"), ("my-federation", "10", "0"), ("12 --verbose", "12", "1"), ("999999", "999999", "1")],
)
def test_the_leading_count_or_the_default(words, count, given):
    done = _bash(f'source scripts/flwr_env.sh && leading_count test clients 10 {words} && echo "$COUNT $COUNT_GIVEN"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [count, given]


@pytest.mark.parametrize("script, name, value, message", [
    ("simulate.sh", "FL_DP_CLIENT_GPUS", "abc", "FL_DP_CLIENT_GPUS must be a number of GPUs >= 0 (e.g. 0.25), got 'abc'"),
    ("simulate.sh", "FL_DP_CLIENT_GPUS", "-1", "FL_DP_CLIENT_GPUS must be a number of GPUs >= 0"),
    ("deploy.sh", "FL_DP_WARM_CLIENTAPP", "yes", "FL_DP_WARM_CLIENTAPP must be 0 or 1, got 'yes'"),
    ("deploy.sh", "FL_DP_DEPLOY_PORT", "x1", "FL_DP_DEPLOY_PORT must be a port number, got 'x1'"),
    ("deploy.sh", "FL_DP_DEPLOY_PORT", "65535", "FL_DP_DEPLOY_PORT=65535 leaves no room for 2 SuperNode ports up to 65535"),
])
def test_a_bad_environment_variable_stops_the_script_naming_it(script, name, value, message):
    done = _bash(f"{name}='{value}' bash scripts/{script} --run-config 'num-server-rounds=1'")
    assert done.returncode == 2
    assert f"scripts/{script}: {message}" in done.stderr
    assert "flwr" not in done.stdout.lower()  # nothing was started


@pytest.mark.parametrize("value, passes", [("", True), ("0.25", True), ("2", True), (".5", True), ("1e3", False), ("0.25x", False)])
def test_env_matches_passes_a_good_or_empty_value(value, passes):
    done = _bash(f"source scripts/flwr_env.sh && V='{value}' && env_matches test V '^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)$' 'a number' && echo ok")
    assert (done.returncode == 0 and done.stdout.strip() == "ok") is passes, done.stderr


def _processes_naming(text: str) -> list[str]:
    """Processes with ``text`` in their command line or environment (Ray renames its processes,
    ``ray::DashboardAgent``, but they keep the environment the script gave them)."""
    return [f"{pid}: {cmdline[:120]}" for pid, cmdline, environ in processes(with_environ=True) if text in cmdline or text in environ]


@pytest.mark.slow
def test_an_interrupted_simulation_leaves_no_process_behind(tmp_path):
    """Ctrl-C in the middle of simulate.sh: the SuperLink, the simulation process and its Ray
    cluster all stop (Ray's agents outlived an interrupted run before)."""
    import signal
    import socket
    import time

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 39091)) == 0:
            pytest.skip("a local SuperLink already listens on 127.0.0.1:39091")
    ray_dir = Path(f"/tmp/fl-dp-int-{os.getpid()}")  # Ray's socket paths must stay short
    env = {**os.environ, "FL_DP_VENV": str(VENV), "FLWR_HOME": str(tmp_path / "flwr-home"), "RAY_TMPDIR": str(ray_dir)}
    run_config = f"num-server-rounds=500 dataset='synthetic' model='logreg' results-dir='{tmp_path}'"
    script = subprocess.Popen(
        ["bash", "scripts/simulate.sh", "2", "--run-config", run_config],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        for line in script.stdout:  # until the rounds are under way
            if "round 3/500" in line:
                break
        os.killpg(script.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
        script.wait(timeout=60)
        deadline = time.monotonic() + 20
        while _processes_naming(str(ray_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_naming(str(ray_dir)) == []
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
        for line in _processes_naming(str(ray_dir)):
            subprocess.run(["kill", "-9", line.split(":")[0]], check=False)
        subprocess.run(["rm", "-rf", str(ray_dir)], check=False)
