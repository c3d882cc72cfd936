"""The scripts' own arguments: scripts/simulate.sh and scripts/deploy.sh refuse a client count that
is not one before anything starts, and take their default when the first word is a Flower option."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
