"""The Flower apps of a run built from Python (strategies.build_apps / simulate) on Ray."""

import pandas as pd
import pytest

from fl_dp import RunConfig
from fl_dp.inprocess import run_inprocess


@pytest.mark.slow
def test_a_simulation_built_from_python_equals_the_in_process_loop(tmp_path, monkeypatch):
    from strategies import simulate

    monkeypatch.setenv("RAY_TMPDIR", "/tmp/fl-dp-ray")
    cfg = RunConfig(strategy="alpha-normec", dataset="synthetic", model="logreg", num_clients=4, clients_per_round=4,
                    num_server_rounds=3, batch_size=0, eval_samples=0, server_lr=0.5, noise_multiplier=0.5,
                    results_dir=str(tmp_path))
    run = simulate(cfg)
    expected = run_inprocess(cfg)
    volatile = ["round-seconds"]
    pd.testing.assert_frame_equal(run.history.drop(columns=volatile), expected.drop(columns=volatile), check_dtype=False, atol=1e-6)
    assert sorted(run.core.ledger.epsilons()) == [str(n) for n in sorted(int(c) for c in run.core.ledger.epsilons())]
    assert (tmp_path / "alpha-normec.csv").exists() and (tmp_path / "alpha-normec.png").exists()


def test_build_apps_needs_a_population():
    from strategies import build_apps

    run = build_apps(RunConfig(dataset="synthetic", model="logreg", num_clients=3, clients_per_round=3))
    assert run.server_app is not None and run.client_app is not None and run.history.empty
    with pytest.raises(Exception, match="num-clients"):
        build_apps(RunConfig(num_clients=0, clients_per_round=0))
