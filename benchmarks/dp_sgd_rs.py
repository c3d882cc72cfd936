"""DP-SGD with and without random sparsification inside federated clients (seed 003).

Fashion-MNIST, the small CNN, sample-level (eps, delta = 1e-5), clip C = 1, expected batch 256,
lr 0.5 with momentum 0.9, gradual cooling to r*:

- one client holding the whole (sub-sampled) training set, i.e. centralised DP-SGD, at eps in
  {1, 3} and r* in {0 (plain DP-SGD), 0.5, 0.7, 0.9};
- 10 clients (IID) at eps 3, r* in {0, 0.7}.

On 2 CPU cores per-sample gradients cost ~2 ms a sample, so the default trains on an 8,000-sample
subset for 6 epochs; the paper's Table 2 trains on all 60,000 for many more epochs and tunes
hyper-parameters, so compare the direction of the effect of RS, not the absolute numbers
(paper, FMNIST DP-CNN/S: 83.2 -> 84.5 at eps 1, 86.6 -> 87.4 at eps 3).

    python -m benchmarks.dp_sgd_rs        # about 15 minutes on 2 cores
"""

from __future__ import annotations

import pandas as pd

from benchmarks.common import base_parser, markdown_table, new_figure, run_grid, save_figure, summarise, write_outputs
from fl_dp.config import RunConfig

PAPER = {(1.0, 0.0): 83.2, (3.0, 0.0): 86.6}  # DP-CNN/S without RS; with RS: 84.5 and 87.4


def jobs(samples: int, epochs: int, seeds: int, quick: bool):
    common = dict(
        dataset="fashion-mnist", model="cnn", batch_size=256, client_lr=0.5, momentum=0.9, clip=1.0,
        max_train_samples=samples, num_server_rounds=epochs, eval_samples=2000,
    )
    one_client = [(eps, rate) for eps in (1.0, 3.0) for rate in (0.0, 0.5, 0.7, 0.9)]
    ten_clients = [(3.0, 0.0), (3.0, 0.7)]
    if quick:
        one_client, ten_clients = [(3.0, 0.0), (3.0, 0.7)], []
    for clients, settings in ((1, one_client), (10, ten_clients)):
        for eps, rate in settings:
            for seed in range(seeds if clients == 1 else 1):
                cfg = RunConfig(
                    strategy="dp-sgd-rs" if rate else "dp-sgd",
                    rs_final_rate=rate if rate else 0.7,
                    num_clients=clients,
                    clients_per_round=clients,
                    target_epsilon=eps,
                    seed=seed,
                    **common,
                )
                yield cfg, {"clients": clients, "epsilon": eps, "r*": rate}


def plot(histories: pd.DataFrame):
    def draw(out):

        fig, axes = new_figure(1, 2, figsize=(10, 3.6))
        for ax, eps in zip(axes, (1.0, 3.0)):
            sub = histories[(histories["epsilon"] == eps) & (histories["clients"] == 1)]
            for rate, runs in sub.groupby("r*"):
                curve = runs.groupby("round")["test-accuracy"].mean()
                ax.plot(curve.index, curve.values, marker="o", label=f"r* = {rate:g}" if rate else "DP-SGD (no RS)")
            ax.set_title(f"one client (centralised), eps = {eps:g}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
        save_figure(fig, axes[-1], out / "accuracy.png")

    return draw


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--samples", type=int, default=8_000, help="training samples (0 = all 60,000)")
    args = parser.parse_args()
    epochs = args.rounds or (2 if args.quick else 6)
    samples = 2000 if args.quick else args.samples
    grid = list(jobs(samples, epochs, 1 if args.quick else args.seeds, args.quick))
    print(f"{len(grid)} runs of {epochs} epochs on {samples or 60000} samples, {args.workers} workers", flush=True)
    histories = run_grid(grid, args.workers)
    table = summarise(histories, ["clients", "epsilon", "r*"], last_k=1)
    table["paper (no RS, 60k, tuned)"] = [PAPER.get((e, r), float("nan")) / 100 for e, r in zip(table["epsilon"], table["r*"])]
    table["megabits-up per round"] = [
        histories[(histories["clients"] == c) & (histories["epsilon"] == e) & (histories["r*"] == r)]["bytes-up"].mean() * 8 / 1e6
        for c, e, r in zip(table["clients"], table["epsilon"], table["r*"])
    ]
    out = write_outputs("dp_sgd_rs" + ("-quick" if args.quick else ""), histories, table, plot(histories))
    print(markdown_table(table))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
