"""A real deployment on 127.0.0.1: SuperLink + 2 SuperNodes over TLS, 2 rounds of alpha-NormEC."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fl_dp.config import RunConfig
from fl_dp.federation import run_inprocess

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_tls_deployment_two_supernodes_two_rounds_of_alpha_normec(tmp_path):
    settings = dict(
        strategy="alpha-normec", dataset="synthetic", model="logreg", batch_size=0, num_server_rounds=2,
        server_lr=0.5, target_epsilon=4.0, num_clients=2, clients_per_round=2,
    )
    run_config = " ".join(f"{k.replace('_', '-')}={v!r}" if isinstance(v, str) else f"{k.replace('_', '-')}={v}" for k, v in settings.items())
    run_config += f" os-randomness=false run-name='deploy' results-dir='{tmp_path}'"
    env = {**os.environ, "FL_DP_VENV": str(Path(sys.executable).parent.parent), "FL_DP_DEPLOY_PORT": str(20000 + os.getpid() % 2000 * 5)}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy.sh"), "2", "--run-config", run_config.replace('"', "'")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    history = pd.read_csv(tmp_path / "deploy.csv")
    assert list(history["round"]) == [1, 2] and (history["accepted"] == 2).all()
    assert history["epsilon-max"].iloc[-1] <= 4.0
    # each SuperNode's own privacy ledger persisted across rounds: it composes to the server's epsilon
    assert np.allclose(history["client-epsilon-max"], history["epsilon-max"], rtol=1e-12, atol=0)
    # error-feedback state persisted in the SuperNodes: same trajectory as the in-process loop
    reference = run_inprocess(RunConfig(**settings, eval_samples=2000, results_dir=str(tmp_path)))
    assert np.allclose(history["test-loss"], reference["test-loss"], rtol=1e-5)
