"""The secagg-survivors benchmark's command line writes one row per run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.secagg_survivors import COLUMNS


def test_quick_run_writes_a_row_per_run(tmp_path: Path):
    out = tmp_path / "secagg_survivors.csv"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.secagg_survivors", "--quick", "--survivors", "0.9", "1.0", "--epsilons", "8",
         "--out", str(out)],
        check=True, cwd=Path(__file__).parents[1], capture_output=True, timeout=900,
    )
    table = pd.read_csv(out)
    assert list(table.columns) == COLUMNS
    assert table["secagg_survivors"].tolist() == [0.9, 1.0]
    assert (table["ledger_epsilon"] <= 8.0 + 1e-6).all() and table["test_accuracy"].between(0, 1).all()
