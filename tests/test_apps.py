"""The Flower apps of a run built from Python (strategies.build_apps / simulate) on Ray."""

import pandas as pd
import pytest

from fl_dp import RunConfig
from fl_dp.inprocess import InProcessFederation


@pytest.mark.slow
@pytest.mark.parametrize("privacy_model, extra", [
    ("local", {}),
    ("central", {}),
    # federated evaluation on Ray's actors: 4 of the 6 clients report, as in the replay
    ("local", {"evaluation": "federated", "evaluation_clients": 4, "noise_multiplier": 0.0}),
])
def test_a_simulation_built_from_python_equals_the_in_process_loop(tmp_path, monkeypatch, privacy_model, extra):
    from strategies import simulate

    monkeypatch.setenv("RAY_TMPDIR", "/tmp/fl-dp-ray")
    # a cohort of 3 of 6: Ray's random node ids must not change which partitions train
    keys = dict(strategy="alpha-normec", dataset="synthetic", model="logreg", num_clients=6, clients_per_round=3,
                num_server_rounds=3, batch_size=0, eval_samples=0, server_lr=0.5, noise_multiplier=0.5,
                privacy_model=privacy_model, results_dir=str(tmp_path))
    cfg = RunConfig(**{**keys, **extra})
    run = simulate(cfg)
    partitions = run.core.client_partitions()
    assert sorted(partitions.values()) == list(range(6))
    replay = InProcessFederation(cfg, partitions=partitions)
    expected = replay.run()
    volatile = ["round-seconds"]
    pd.testing.assert_frame_equal(run.history.drop(columns=volatile), expected.drop(columns=volatile), check_dtype=False, atol=1e-6)
    charged = run.core.ledger.epsilons()
    assert charged == pytest.approx(replay.server.ledger.epsilons())
    if privacy_model == "central":
        assert len(charged) == 6  # everyone, sampled or not
    if cfg.evaluation == "federated":
        assert list(run.history["evaluated-clients"]) == [4, 4, 4]
    assert (tmp_path / "alpha-normec.csv").exists() and (tmp_path / "alpha-normec.png").exists()


def test_build_apps_needs_a_population():
    from strategies import build_apps

    run = build_apps(RunConfig(dataset="synthetic", model="logreg", num_clients=3, clients_per_round=3))
    assert run.server_app is not None and run.client_app is not None and run.history.empty
    with pytest.raises(Exception, match="num-clients"):
        build_apps(RunConfig(num_clients=0, clients_per_round=0))


def test_a_clientapp_of_a_central_run_loads_neither_opacus_nor_the_server_side():
    """Importing opacus loads its whole privacy engine (over a second and 100 MB a process); a
    client that never computes an epsilon (central DP or none) must not pay for it in every Ray
    actor or ClientApp process, nor for the server's strategy (pandas), plots, or the special
    functions (scipy) of the Skellam ledger."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "import clients.client_app\n"
        "from fl_dp.client import ClientCore\n"
        "from fl_dp.config import RunConfig\n"
        "for model in ('central', 'local'):\n"
        "    cfg = RunConfig(strategy='alpha-normec', dataset='synthetic', model='logreg', num_clients=10,\n"
        "                    clients_per_round=5, privacy_model=model, target_epsilon=8.0 if model == 'central' else 0.0)\n"
        "    ClientCore(cfg, 0)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'opacus', 'pandas', 'matplotlib', 'scipy'}))\n"
    )
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip().splitlines()[-1] == "[]"
