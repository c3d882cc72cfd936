"""The privacy-audit benchmark's command line writes the table and the plot the docs show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.privacy_audit import COLUMNS, SCALE, cells, merged


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


def test_central_is_also_audited_at_the_privacy_utility_runs_regime():
    # the privacy-utility benchmark's default run: 1,000 clients, 100 a round, 100 rounds
    assert SCALE["central-100-rounds"][:3] == (1000, 100, 100)
    assert ("central-100-rounds", "central") in {(kind, model) for kind, model, _ in cells((8.0,))}


def test_a_merged_audit_keeps_earlier_rows_and_replaces_a_rerun_configuration():
    def row(strategy, kind, audited):
        values = dict.fromkeys(COLUMNS, 1.0)
        values.update(strategy=strategy, privacy_model="central", target_epsilon=8.0, kind=kind, method="one-run",
                      audited_epsilon_lower_bound=audited)
        return values

    earlier = pd.DataFrame([row("clip21", "central", 2.0), row("alpha-normec", "central", 2.1)], columns=COLUMNS)
    latest = pd.DataFrame([row("alpha-normec", "central", 2.5), row("alpha-normec", "central-100-rounds", 3.5)], columns=COLUMNS)
    table = merged(earlier, latest)
    assert list(table.columns) == COLUMNS
    got = sorted(zip(table["strategy"], table["kind"], table["audited_epsilon_lower_bound"]))
    assert got == [("alpha-normec", "central", 2.5), ("alpha-normec", "central-100-rounds", 3.5), ("clip21", "central", 2.0)]
    assert merged(None, latest) is latest


def test_the_ideal_reference_alone_gives_one_bound_per_size_and_coin_draw():
    from benchmarks.privacy_audit import ideal_table

    table = ideal_table([(3, 200), (6, 200)], 8.0, seeds=2)
    assert list(zip(table["rounds"], table["seed"])) == [(3, 0), (3, 1), (6, 0), (6, 1)]
    assert table["noise_multiplier"].iloc[2] > table["noise_multiplier"].iloc[0]  # more releases, more noise each
    assert ((table["ideal_mechanism_bound"] >= 0) & (table["ideal_mechanism_bound"] < 8.0)).all()
