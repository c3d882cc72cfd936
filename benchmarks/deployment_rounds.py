"""Seconds per round of a real TLS deployment (``scripts/deploy.sh 2``): fl-dp's runtime against
Flower's own, side by side in one run.

alpha-NormEC, the CNN on Fashion-MNIST (the default run config), 2 SuperNodes, every node in every
round, fixed seeds (``os-randomness=false``), so both configurations train the same trajectory:

- ``fl-dp runtime`` (deploy.sh's default): each SuperNode polls every 0.1 s and runs beside one
  long-lived ClientApp process (``scripts/flower_runtime.py``); the ServerApp pulls replies every
  0.1 s (``strategies/flower_grid.py``).
- ``flower's own`` (``FL_DP_WARM_CLIENTAPP=0 FL_DP_FLOWER_OWN_POLLING=1``): flower-supernode as it
  is, a new ``flwr-clientapp`` process (Python, torch, opacus imports) for every message, 3 s polls.

The two alternate (``--repeats`` pairs), so that a host whose speed drifts biases neither. Per run:
the strategy's round time (request sent to aggregate done; median of rounds 2..R), the period
between two rounds' progress lines (that plus the server's evaluation; median of rounds 2..R),
the first round (imports, data), the run's wall time and its final accuracy.

    python -m benchmarks.deployment_rounds                 # 3 pairs of 6-round runs, about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS, markdown_table, output_file, positive_int

ROOT = Path(__file__).parents[1]
CONFIGURATIONS = {
    "fl-dp runtime": {},
    "flower's own": {"FL_DP_WARM_CLIENTAPP": "0", "FL_DP_FLOWER_OWN_POLLING": "1"},
}
PROGRESS = re.compile(r"^(\S+ \S+) INFO fl_dp: round (\d+)/\d+:")
GOAL_SECONDS = 2.0


def round_periods(flower_log: Path) -> list[float]:
    """Seconds between consecutive rounds' progress lines of a run's flower.log."""
    stamps = [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        for line in flower_log.read_text().splitlines()
        if (m := PROGRESS.match(line))
    ]
    return [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]


def deploy(configuration: str, rounds: int, port: int) -> dict:
    """One ``scripts/deploy.sh 2`` run in a throw-away directory."""
    with tempfile.TemporaryDirectory(prefix="fldeploy-", dir="/tmp") as tmp:
        run_config = f"num-server-rounds={rounds} os-randomness=false run-name='deploy' results-dir='{tmp}'"
        env = {
            **os.environ,
            **CONFIGURATIONS[configuration],
            "FL_DP_VENV": str(Path(sys.executable).parent.parent),
            "FL_DP_DEPLOY_PORT": str(port),
            "FL_DP_CLIENT_STATE_DIR": f"{tmp}/client-state",
        }
        started = time.perf_counter()
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "deploy.sh"), "2", "--run-config", run_config],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=1800,
        )
        total = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError((result.stdout + result.stderr)[-4000:])
        history = pd.read_csv(Path(tmp) / "deploy.csv")
        periods = round_periods(Path(tmp) / "deploy" / "flower.log")
    later = history["round-seconds"].iloc[1:]
    return {
        "configuration": configuration,
        "rounds": rounds,
        "round_seconds": float(later.median()),
        "round_period_seconds": float(pd.Series(periods).median()),
        "first_round_seconds": float(history["round-seconds"].iloc[0]),
        "run_seconds": total,
        "final_accuracy": float(history["test-accuracy"].iloc[-1]),
    }


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: the medians over repeats, and Flower's own over fl-dp's (per round)."""
    medians = table.groupby("configuration", sort=False)[
        ["round_seconds", "round_period_seconds", "first_round_seconds", "run_seconds"]
    ].median()
    ours, flowers = medians.loc["fl-dp runtime"], medians.loc["flower's own"]
    medians.loc["flower's own / fl-dp runtime"] = flowers / ours
    within = medians["round_period_seconds"] <= GOAL_SECONDS
    medians[f"period <= {GOAL_SECONDS:g} s"] = [str(bool(w)) for w in within[:-1]] + [""]
    return medians.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=3, help="pairs of runs")
    parser.add_argument("--rounds", type=positive_int, default=6)
    parser.add_argument("--out", type=output_file, default=RESULTS / "deployment_rounds" / "deployment_rounds.csv")
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        for i, configuration in enumerate(CONFIGURATIONS):
            row = deploy(configuration, args.rounds, port=23000 + 10 * (2 * repeat + i))
            rows.append({"repeat": repeat + 1, **row})
            print(
                f"repeat {repeat + 1} {configuration}: {row['round_period_seconds']:.2f} s a round "
                f"({row['round_seconds']:.2f} s to aggregate), run {row['run_seconds']:.0f} s, "
                f"accuracy {row['final_accuracy']:.4f}",
                flush=True,
            )
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    accuracies = table.groupby("configuration")["final_accuracy"].nunique()
    print(markdown_table(table))
    print()
    print(markdown_table(summary(table)))
    print(f"\nsame final accuracy in every run: {bool((accuracies == 1).all() and table['final_accuracy'].nunique() == 1)}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
