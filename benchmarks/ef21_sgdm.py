"""‖EF21-SGDM‖ vs ‖EF21‖ and EF21 with stochastic gradients (seed 001, the neural-network experiment).

Fashion-MNIST, 5 clients (IID), minibatch 128, top-k with k = 1% of d; the small CNN by
default (``--model resnet20`` needs 32x32 inputs, i.e. CIFAR-10 under data-dir). Test accuracy
and megabits sent up, mean over seeds.

    python -m benchmarks.ef21_sgdm          # about 5 minutes on 2 cores
"""

from __future__ import annotations

import pandas as pd

from benchmarks.common import base_parser, markdown_table, new_figure, run_grid, save_figure, summarise, write_outputs
from fl_dp.config import RunConfig
from fl_dp.data import DATASETS

METHODS = [
    ("‖EF21-SGDM‖ top-1%", dict(strategy="ef21-sgdm-norm", server_lr=3.0, sgdm_eta=0.1)),
    ("‖EF21‖ top-1%", dict(strategy="ef21-norm", server_lr=3.0)),
    ("EF21 top-1%", dict(strategy="ef21", server_lr=0.5)),
    ("‖EF21-SGDM‖ uncompressed", dict(strategy="ef21-sgdm-norm", server_lr=3.0, sgdm_eta=0.1, compressor="identity")),
]


def plot(histories: pd.DataFrame):
    def draw(out):

        fig, axes = new_figure(1, 2, figsize=(10, 3.6))
        for method, runs in histories.groupby("method"):
            curve = runs.groupby("round")[["test-accuracy", "bytes-up"]].mean()
            axes[0].plot(curve.index, curve["test-accuracy"], label=method)
            axes[1].semilogx(curve["bytes-up"].cumsum() * 8 / 1e6, curve["test-accuracy"], label=method)
        axes[0].set_xlabel("round")
        axes[1].set_xlabel("megabits sent up (all clients)")
        for ax in axes:
            ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
        save_figure(fig, axes[1], out / "accuracy.png")

    return draw


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--model", default="cnn", choices=["cnn", "resnet20"])
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    args = parser.parse_args()
    rounds = args.rounds or (10 if args.quick else 100)
    seeds = 1 if args.quick else args.seeds
    grid = []
    for method, settings in METHODS:
        for seed in range(seeds):
            defaults = dict(compressor="top-k", compress_ratio=0.01)
            cfg = RunConfig(
                dataset=args.dataset,
                model=args.model,
                num_clients=5,
                clients_per_round=5,
                batch_size=128,
                num_server_rounds=rounds,
                eval_samples=1000,
                seed=seed,
                **{**defaults, **settings},
            )
            grid.append((cfg, {"method": method}))
    print(f"{len(grid)} runs of {rounds} rounds on {args.workers} workers", flush=True)
    histories = run_grid(grid, args.workers)
    histories["megabits-up"] = histories.groupby(["method", "seed"])["bytes-up"].cumsum() * 8 / 1e6
    table = summarise(histories, ["method"], last_k=5)
    bits = histories.groupby("method")["megabits-up"].max().rename("megabits-up total").reset_index()
    table = table.merge(bits, on="method")
    out = write_outputs("ef21_sgdm" + ("-quick" if args.quick else ""), histories, table, plot(histories))
    print(markdown_table(table))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
