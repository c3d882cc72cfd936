"""One run through the real stack: `flwr run` -> local SuperLink -> Ray virtual clients."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from flwr.common.config import parse_config_args
from local_superlink import superlinks_of

from fl_dp.config import RunConfig
from fl_dp.inprocess import InProcessFederation

ROOT = Path(__file__).parents[1]


def _run_simulation(tmp_path, num_clients, run_config):
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        # Ray's socket paths must stay under 107 bytes: pytest's tmp_path is too deep
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp"),
        "FL_DP_VENV": str(Path(sys.executable).parent.parent),
    }
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "simulate.sh"), str(num_clients), "--run-config", run_config],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _completed_run(tmp_path, num_clients, run_config, run_name):
    """Run the simulation, check that it succeeded and return (its per-round CSV, its output)."""
    result = _run_simulation(tmp_path, num_clients, f"{run_config} run-name='{run_name}' results-dir='{tmp_path}'")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert (tmp_path / f"{run_name}.csv").exists(), output[-6000:]
    return pd.read_csv(tmp_path / f"{run_name}.csv"), output


@pytest.mark.slow
def test_flwr_run_with_ray_writes_per_round_metrics(tmp_path):
    # someone else's simulation SuperLink on this machine: simulate.sh must leave it running
    decoy = subprocess.Popen(["bash", "-c", "sleep 600", "flower-superlink", "--simulation", "--log-file", "/elsewhere"])
    run_config = (
        "strategy='alpha-normec' dataset='synthetic' model='logreg' num-server-rounds=3 "
        "clients-per-round=2 batch-size=0 server-lr=0.5 target-epsilon=5.0"
    )
    history, output = _completed_run(tmp_path, 3, run_config, "ray-smoke")
    assert list(history["round"]) == [1, 2, 3]
    assert (history["sampled"] == 2).all() and (history["accepted"] == 2).all()
    assert history["epsilon-max"].iloc[-1] <= 5.0 and history["epsilon-max"].is_monotonic_increasing
    assert history["test-accuracy"].notna().all()
    assert "round 3/3" in output
    assert decoy.poll() is None, "simulate.sh stopped a SuperLink it did not start"
    decoy.kill()
    assert superlinks_of(tmp_path / "flwr-home") == [], "simulate.sh left its own SuperLink running"


@pytest.mark.slow
def test_a_failed_run_fails_the_script_with_the_reason(tmp_path):
    result = _run_simulation(tmp_path, 2, "strategy='fedprox' dataset='synthetic' model='logreg' clients-per-round=2")
    assert result.returncode != 0
    assert "finished:failed" in result.stderr and "unknown strategy 'fedprox'" in result.stderr


@pytest.mark.slow
def test_flwr_run_with_central_dp_samples_poisson_cohorts_and_charges_everyone(tmp_path):
    run_config = (
        "strategy='alpha-normec' privacy-model='central' dataset='synthetic' model='logreg' num-server-rounds=4 "
        "clients-per-round=5 batch-size=0 server-lr=0.5 target-epsilon=4.0"
    )
    history, _ = _completed_run(tmp_path, 20, run_config, "central")
    assert list(history["round"]) == [1, 2, 3, 4]
    assert (history["privacy-model"] == "central").all()
    assert history["epsilon-max"].iloc[-1] <= 4.0
    # every client charged at q = 5/20 every round: the mean equals the max
    assert history["epsilon-mean"].iloc[-1] == pytest.approx(history["epsilon-max"].iloc[-1])
    assert history["train-loss"].isna().all()  # nothing computed from private data leaves a client
    # the ServerApp's process loads the data once and, training no client, lets the training split go
    log = (tmp_path / "central" / "flower.log").read_text()
    assert log.count("dataset 'synthetic' loaded") == 1, log[-3000:]
    assert log.index("dataset 'synthetic' loaded") < log.index("released its copy of the training data")
    # the same seed, the same run, though Flower draws new node ids: the same cohorts and sums, and
    # those of the in-process loop with its own client names
    again, _ = _completed_run(tmp_path, 20, run_config, "central-again")
    measured = [c for c in history.columns if "seconds" not in c]
    pd.testing.assert_frame_equal(history[measured], again[measured])
    # the app's defaults (pyproject's, test_config checks) with --run-config parsed as flwr run parses it
    app_defaults = RunConfig(num_clients=0, clients_per_round=0).to_flwr()
    cfg = RunConfig.from_flwr({**app_defaults, **parse_config_args([run_config])}).for_federation(20)
    in_process = InProcessFederation(cfg.replace(results_dir=str(tmp_path / "in-process"))).run()
    assert list(in_process["sampled"]) == list(history["sampled"])
    assert list(in_process["test-loss"]) == pytest.approx(list(history["test-loss"]), rel=1e-5)
