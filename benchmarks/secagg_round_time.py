"""Per-round time of `distributed` (SecAgg+ with Skellam shares) beside `central`, in a Flower simulation.

alpha-NormEC on the CNN / Fashion-MNIST through `scripts/simulate.sh` (flwr run on Ray), eps 8,
Poisson cohorts at q = clients-per-round / num-clients. The runs alternate central, distributed,
central and the ratio uses the mean of the two central runs (these machines drift); per-round time
is the median of rounds 2..R. Bytes per client per round: the dense float32 message under central;
under distributed the share at its ring width and what SecAgg+ sends for it (int64 per coordinate).

    python -m benchmarks.secagg_round_time                     # 100 nodes, 20 a round, 4 rounds
    python -m benchmarks.secagg_round_time --full              # 1000 nodes, 100 a round, 5 rounds
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pandas as pd

from benchmarks.common import output_file
from benchmarks.privacy_utility import bytes_per_client
from benchmarks.simulation import simulate_sh
from fl_dp.config import RunConfig
from fl_dp.distributed import mechanism_for

ROOT = Path(__file__).parents[1]


def simulate(privacy_model: str, nodes: int, per_round: int, rounds: int) -> dict:
    settings = dict(
        strategy="alpha-normec", privacy_model=privacy_model, target_epsilon=8.0, num_clients=nodes,
        clients_per_round=per_round, num_server_rounds=rounds, eval_every=rounds, server_lr=0.5,
    )
    history, total = simulate_sh(nodes, settings)
    cfg = RunConfig(**settings)
    row = {
        "privacy_model": privacy_model, "nodes": nodes, "clients_per_round": per_round, "rounds": rounds,
        "total_seconds": total,
        "round_seconds": statistics.median(history["round-seconds"].iloc[1:]),
        "bytes_up_per_client": bytes_per_client(history),
        "epsilon": float(history["epsilon-max"].iloc[-1]),
    }
    if privacy_model == "distributed":
        row["secagg_bytes_per_client"] = 8 * mechanism_for(cfg).padded
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="1000 nodes, 100 a round, 5 rounds")
    parser.add_argument("--out", type=output_file, default=ROOT / "results" / "secagg_round_time.csv")
    args = parser.parse_args()
    nodes, per_round, rounds = (1000, 100, 5) if args.full else (100, 20, 4)
    rows = [simulate(model, nodes, per_round, rounds) for model in ("central", "distributed", "central")]
    table = pd.DataFrame(rows)
    central = (rows[0]["round_seconds"] + rows[2]["round_seconds"]) / 2
    print(table.to_string(index=False))
    print(f"per-round time distributed / central: {rows[1]['round_seconds'] / central:.2f} "
          f"({rows[1]['round_seconds']:.2f} s against {central:.2f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
