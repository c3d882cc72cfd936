"""Byzantine-robust aggregation against sign-flipping and large-value attackers.

Breast-cancer logistic regression (d = 31), 10 clients, 2 of them Byzantine (the first two
partitions), full local gradients (mean-sgd) or one local epoch (fedavg), 100 rounds. Each
attacker sends -1 (``sign-flip``) or -1000 (``large``) times its honest message. Aggregators:
the plain mean, the coordinate-wise trimmed mean (trim 0.2: two values dropped at each end) and
the coordinate-wise median (Yin et al. 2018). Every setting runs side by side in one grid; the
table reports the final test accuracy and its ratio to the plain mean's under the same attack.

    python -m benchmarks.robust_aggregation            # 2 seeds, about a minute on 2 cores
    python -m benchmarks.robust_aggregation --quick    # 1 seed, 20 rounds
"""

from __future__ import annotations

import itertools

import pandas as pd

from benchmarks.common import base_parser, markdown_table, run_grid, summarise, write_outputs
from fl_dp.config import RunConfig

STRATEGIES = {
    "mean-sgd": dict(strategy="mean-sgd", server_lr=0.5, batch_size=0),
    "fedavg": dict(strategy="fedavg", client_lr=0.1, batch_size=32, server_lr=1.0),
}
ATTACKS = {"none": dict(), "sign-flip": dict(byzantine_fraction=0.2), "large": dict(byzantine_fraction=0.2, byzantine_attack="large")}
AGGREGATORS = {"mean": dict(), "trimmed-mean": dict(aggregator="trimmed-mean", trim_fraction=0.2), "median": dict(aggregator="median")}


def jobs(seeds: int, rounds: int):
    for (strategy, settings), (attack, threat), (aggregator, rule), seed in itertools.product(
        STRATEGIES.items(), ATTACKS.items(), AGGREGATORS.items(), range(seeds)
    ):
        cfg = RunConfig(
            dataset="breast-cancer", model="logreg", num_clients=10, clients_per_round=10, eval_samples=0,
            num_server_rounds=rounds, seed=seed, **settings, **threat, **rule,
        )
        yield cfg, {"attack": attack, "aggregator": aggregator}


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Each aggregator's accuracy over the plain mean's, per strategy and attack."""
    mean = table[table["aggregator"] == "mean"].set_index(["strategy", "attack"])["test-accuracy-mean"]
    out = table.copy()
    out["vs-mean"] = [row["test-accuracy-mean"] / mean[(row["strategy"], row["attack"])] for _, row in table.iterrows()]
    return out


def main() -> None:
    parser = base_parser(__doc__)
    args = parser.parse_args()
    rounds = args.rounds or (20 if args.quick else 100)
    grid = list(jobs(1 if args.quick else args.seeds, rounds))
    print(f"{len(grid)} runs on {args.workers} workers", flush=True)
    histories = run_grid(grid, args.workers, progress=False)
    table = ratios(summarise(histories, ["strategy", "attack", "aggregator"]))
    out = write_outputs("robust_aggregation" + ("-quick" if args.quick else ""), histories, table, None)
    print(markdown_table(table))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
