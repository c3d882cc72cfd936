"""The privacy-audit benchmark's command line writes the table and the plot the docs show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.privacy_audit import COLUMNS, cells


def test_grid_covers_every_private_strategy_and_model():
    covered = {(keys["strategy"], model) for _, model, keys in cells((8.0,))}
    for strategy in ("alpha-normec", "dp-normalized-sgd", "clip21", "dp-fedavg"):
        assert {(strategy, "local"), (strategy, "central")} <= covered
    assert {("sign-vote", "local"), ("dp-sgd", "local"), ("dp-sgd-rs", "local")} <= covered


def test_quick_run_writes_csv_and_plot(tmp_path: Path):
    out = tmp_path / "privacy_audit.csv"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.privacy_audit", "--quick", "--strategies", "clip21", "--epsilons", "2", "--out", str(out)],
        check=True, cwd=Path(__file__).parents[1], capture_output=True, timeout=600,
    )
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert set(table["method"]) == {"one-run", "many-run (Clopper-Pearson)"}
    assert (table["audited_epsilon_lower_bound"] <= table["ledger_epsilon"]).all()
    assert out.with_suffix(".png").stat().st_size > 0
