"""Majority vote vs mean aggregation under heavy-tailed noise and sign-flipping clients (seed 002).

15 clients (odd, so honest votes never tie), IID, minibatch 32, logistic regression by default
(``--model cnn`` for the CNN), on Fashion-MNIST and MNIST.

(a) heavy tails: Student-t gradient noise with kappa in {2, 1.5, 1.2} (scale 0.05) added to every
    client's gradient, and none; signSGD with majority vote vs SGD with mean aggregation.
(b) faulty clients: a fraction in {0, 0.1, 0.2, 0.3, 0.45} of clients flip the sign of what they send.

The step size of each method is tuned per setting over a small grid and the best mean over seeds
(of the last 5 rounds' test accuracy) is reported with it.

    python -m benchmarks.signs        # about 10 minutes on 2 cores
"""

from __future__ import annotations

import pandas as pd

from benchmarks.common import accuracy_errorbar, base_parser, markdown_table, new_figure, run_grid, save_figure, summarise, write_outputs
from fl_dp.config import RunConfig
from fl_dp.data import DATASETS

METHODS = {
    "majority vote (signSGD)": (dict(strategy="sign-vote", sign_compressor="sign"), (3e-4, 1e-3)),
    "mean (SGD)": (dict(strategy="mean-sgd"), (0.1, 0.3)),
}
HEAVY_TAILS = [("none", 2.0), ("student-t", 2.0), ("student-t", 1.5), ("student-t", 1.2)]
BYZANTINE = [0.0, 0.1, 0.2, 0.3, 0.45]


def jobs(datasets: list[str], model: str, seeds: int, rounds: int, experiments: list[str]):
    common = dict(model=model, num_clients=15, clients_per_round=15, batch_size=32, eval_samples=2000, num_server_rounds=rounds)
    for dataset in datasets:
        for method, (settings, gammas) in METHODS.items():
            for gamma in gammas:
                for seed in range(seeds):
                    base = dict(dataset=dataset, seed=seed, server_lr=gamma, **common, **settings)
                    labels = {"dataset": dataset, "method": method, "gamma": gamma}
                    if "heavy-tails" in experiments:
                        for noise, kappa in HEAVY_TAILS:
                            heavy = dict(grad_noise=noise, grad_noise_kappa=kappa, grad_noise_scale=0.05) if noise != "none" else {}
                            cfg = RunConfig(**base, **heavy)
                            yield cfg, {**labels, "experiment": "heavy-tails", "noise": "none" if noise == "none" else f"t, kappa={kappa:g}", "byzantine": 0.0}
                    if "byzantine" in experiments:
                        for fraction in BYZANTINE:
                            if fraction == 0.0 and "heavy-tails" in experiments:
                                continue  # the same run as heavy-tails / none
                            cfg = RunConfig(**base, byzantine_fraction=fraction)
                            yield cfg, {**labels, "experiment": "byzantine", "noise": "none", "byzantine": fraction}


def plot(table: pd.DataFrame):
    def draw(out):

        datasets = sorted(table["dataset"].unique())
        fig, axes = new_figure(2, len(datasets), figsize=(5 * len(datasets), 7), squeeze=False)
        for j, dataset in enumerate(datasets):
            sub = table[table["dataset"] == dataset]
            noise_order = ["none"] + [f"t, kappa={k:g}" for _, k in HEAVY_TAILS[1:]]
            for method, rows in sub[sub["byzantine"] == 0.0].groupby("method"):
                rows = rows.set_index("noise").reindex(noise_order)
                accuracy_errorbar(axes[0][j], range(len(noise_order)), rows, method)
            axes[0][j].set_xticks(range(len(noise_order)), noise_order)
            axes[0][j].set_title(f"{dataset}: heavy-tailed gradient noise")
            for method, rows in sub[sub["noise"] == "none"].groupby("method"):
                rows = rows.sort_values("byzantine")
                accuracy_errorbar(axes[1][j], rows["byzantine"], rows, method)
            axes[1][j].set_xlabel("fraction of sign-flipping clients")
            axes[1][j].set_title(f"{dataset}: faulty clients")
            for ax in axes[:, j]:
                ax.set_ylabel("test accuracy")
                ax.grid(alpha=0.3)
        save_figure(fig, axes[0][-1], out / "robustness.png")

    return draw


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--model", default="logreg", choices=["logreg", "cnn"])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=["fashion-mnist", "mnist"])
    args = parser.parse_args()
    if args.quick:
        grid = list(jobs(["fashion-mnist"], args.model, 1, args.rounds or 10, ["byzantine"]))[:4]
    else:
        grid = list(jobs(args.datasets, args.model, args.seeds, args.rounds or 100, ["heavy-tails", "byzantine"]))
    print(f"{len(grid)} runs on {args.workers} workers", flush=True)
    histories = run_grid(grid, args.workers)
    tuned = summarise(histories, ["dataset", "experiment", "noise", "byzantine", "method", "gamma"], last_k=5)
    best = tuned.sort_values("test-accuracy-mean").groupby(["dataset", "experiment", "noise", "byzantine", "method"]).tail(1)
    table = best.sort_values(["dataset", "experiment", "noise", "byzantine", "method"]).reset_index(drop=True)
    out = write_outputs("signs" + ("-quick" if args.quick else ""), histories, table, plot(table))
    print(markdown_table(table))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
