"""alpha-NormEC under `distributed` at another `secagg-survivors`, beside the privacy-utility grid's runs.

The noise shares are calibrated so that ceil(secagg-survivors * cohort) surviving shares carry the
accountant's noise; with everyone replying the released sum carries 1/sqrt(secagg-survivors) times
central's noise std. This runs alpha-normec (Fashion-MNIST CNN, 1,000 clients, q = 0.1, 100 rounds,
seed 0, in process with the secure sum simulated) at `central`'s best setting of each epsilon
(:data:`CENTRAL_BEST`, read off docs/results/privacy_utility_best.csv; no tuning of its own) and
writes one row per run to ``results/secagg_survivors.csv`` (each run's history under
``results/secagg_survivors/``).

    python -m benchmarks.secagg_survivors --survivors 0.9 --epsilons 2 8
    python -m benchmarks.secagg_survivors --quick            # smoke test: 100 clients, 3 rounds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import fraction, output_file
from benchmarks.privacy_utility import config, setting_label
from fl_dp.inprocess import run_inprocess

RESULTS = Path(__file__).parents[1] / "results"
#: central's best alpha-normec setting per epsilon in the privacy-utility grid (100 rounds)
CENTRAL_BEST = {2.0: dict(beta=0.1, server_lr=2.0), 8.0: dict(beta=0.3, server_lr=1.0)}
COLUMNS = ["strategy", "privacy_model", "secagg_survivors", "epsilon", "setting", "rounds", "seed", "noise_multiplier",
           "ledger_epsilon", "test_accuracy", "seconds"]


def run(survivors: float, eps: float, scale: dict[str, int], results_dir: Path) -> dict:
    setting = CENTRAL_BEST[eps]
    cfg = config("alpha-normec", "distributed", eps, setting, 0, scale).replace(
        secagg_survivors=survivors, results_dir=str(results_dir), run_name=f"s{survivors:g}-eps{eps:g}"
    )
    started = time.perf_counter()
    history = run_inprocess(cfg)
    return {
        "strategy": cfg.strategy, "privacy_model": cfg.privacy_model, "secagg_survivors": survivors, "epsilon": eps,
        "setting": setting_label(setting), "rounds": cfg.num_server_rounds,
        "seed": cfg.seed, "noise_multiplier": float(history["noise-multiplier"].iloc[-1]),
        "ledger_epsilon": float(history["epsilon-max"].iloc[-1]),
        "test_accuracy": float(history["test-accuracy"].dropna().iloc[-1]), "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--survivors", type=fraction, nargs="+", default=[0.9])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[2.0, 8.0], choices=sorted(CENTRAL_BEST))
    parser.add_argument("--quick", action="store_true", help="100 clients, 3 rounds")
    parser.add_argument("--out", type=output_file, default=RESULTS / "secagg_survivors.csv")
    args = parser.parse_args()
    scale = dict(clients=100, per_round=10, rounds=3) if args.quick else dict(clients=1000, per_round=100, rounds=100)
    rows = []
    for survivors in args.survivors:
        for eps in args.epsilons:
            rows.append(run(survivors, eps, scale, args.out.parent / "secagg_survivors"))
            print(rows[-1], flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows, columns=COLUMNS).to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
