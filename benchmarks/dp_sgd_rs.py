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

``--full`` is the paper's regime for Fashion-MNIST (Table 2, DP-CNN/S): the 26k tanh network of
Papernot et al. and Tramer and Boneh (model ``dp-cnn``), all 60,000 training images, the whole test
set, and the hyper-parameters those works give and Zhu and Blaschko start from (batch 2048, lr 4,
momentum 0.9, C = 0.1, 40 epochs), fixed for both methods; RS at r* = 0.9 with gradual cooling and
a mask per epoch. Nothing is tuned, for either method (the paper grid-searched C, E and r* for
each). eps in {1, 2, 4}, 3 seeds, one client (one round of 40 local epochs, so momentum runs
through like centralised DP-SGD) and 10 IID clients (6,000 images each, batch 205 so that the
federation's batch is the paper's, 40 rounds of one epoch; momentum restarts each round). A run
takes 12-15 minutes on one core with one client, 6-7 with 10; ``--epsilons``, ``--clients`` and
``--resume`` run the grid in parts:

    python -m benchmarks.dp_sgd_rs --full --clients 1 --epsilons 1 --resume
"""

from __future__ import annotations

import pandas as pd

from benchmarks.common import (
    RESULTS,
    base_parser,
    markdown_table,
    new_figure,
    non_negative_int,
    positive_float,
    positive_int,
    run_grid,
    save_figure,
    summarise,
    write_outputs,
)
from fl_dp.config import RunConfig

#: Table 2, Fashion-MNIST DP-CNN/S: eps -> (DP-SGD, with RS), test accuracy in %
PAPER = {1.0: (83.2, 84.5), 3.0: (86.6, 87.4)}
FULL = dict(model="dp-cnn", batch_size=2048, client_lr=4.0, momentum=0.9, clip=1e-1, epochs=40, final_rate=0.9)
FULL_EPSILONS = (1.0, 2.0, 4.0)
FULL_CLIENTS = (1, 10)


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


def full_jobs(epsilons=FULL_EPSILONS, clients=FULL_CLIENTS, seeds: int = 3):
    """The paper's regime (module docstring): every (clients, eps, method, seed), eps first."""
    for eps in epsilons:
        for num_clients in clients:
            for rate in (0.0, FULL["final_rate"]):
                for seed in range(seeds):
                    one = num_clients == 1
                    cfg = RunConfig(
                        strategy="dp-sgd-rs" if rate else "dp-sgd",
                        rs_final_rate=rate if rate else 0.7,
                        dataset="fashion-mnist",
                        model=FULL["model"],
                        num_clients=num_clients,
                        clients_per_round=num_clients,
                        num_server_rounds=1 if one else FULL["epochs"],
                        local_epochs=FULL["epochs"] if one else 1,
                        batch_size=round(FULL["batch_size"] / num_clients),
                        client_lr=FULL["client_lr"],
                        momentum=FULL["momentum"],
                        clip=FULL["clip"],
                        target_epsilon=eps,
                        max_train_samples=0,
                        eval_samples=0,
                        seed=seed,
                    )
                    yield cfg, {"clients": num_clients, "epsilon": eps, "r*": rate}


def split_finished(grid: list, histories: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """(histories of the grid's runs that reached their last round, the grid's runs still to do)."""
    labels = ["clients", "epsilon", "r*", "seed"]
    last_round = histories.groupby(labels)["round"].max().to_dict()

    def key(job) -> tuple:
        cfg, run = job
        return run["clients"], run["epsilon"], run["r*"], cfg.seed

    finished = {key(job) for job in grid if last_round.get(key(job), 0) >= job[0].num_server_rounds}
    kept = histories[[tuple(k) in finished for k in histories[labels].itertuples(index=False)]]
    return kept.reset_index(drop=True), [job for job in grid if key(job) not in finished]


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
    parser.add_argument("--samples", type=non_negative_int, default=8_000, help="training samples (0 = all 60,000)")
    parser.add_argument("--full", action="store_true", help="the paper's regime (module docstring)")
    parser.add_argument("--epsilons", nargs="+", type=positive_float, default=list(FULL_EPSILONS), help="--full: these epsilons")
    parser.add_argument("--clients", nargs="+", type=positive_int, default=list(FULL_CLIENTS), help="--full: these client counts")
    parser.add_argument("--resume", action="store_true", help="--full: keep the finished runs of an earlier call, run the rest")
    parser.set_defaults(seeds=None)
    args = parser.parse_args()
    name = "dp_sgd_rs" + ("-quick" if args.quick else "-full" if args.full else "")
    prior = None
    if args.full:
        grid = list(full_jobs(args.epsilons, args.clients, args.seeds or 3))
        partial = RESULTS / name / "histories.csv"
        if args.resume and partial.exists():
            prior, grid = split_finished(grid, pd.read_csv(partial))
        print(f"{len(grid)} runs of the paper's regime to do, {args.workers} workers", flush=True)
        histories = run_grid(grid, args.workers, partial_csv=partial, prior=prior)
    else:
        epochs = args.rounds or (2 if args.quick else 6)
        samples = 2000 if args.quick else args.samples
        grid = list(jobs(samples, epochs, 1 if args.quick else args.seeds or 2, args.quick))
        print(f"{len(grid)} runs of {epochs} epochs on {samples or 60000} samples, {args.workers} workers", flush=True)
        histories = run_grid(grid, args.workers)
    table = summary(histories)
    out = write_outputs(name, histories, table, None if args.full else plot(histories))
    if args.full:
        runs_of(histories).to_csv(out / "runs.csv", index=False)  # what docs/results/dp_sgd_rs_full.csv holds
    print(markdown_table(table))
    print(f"written to {out}")


def runs_of(histories: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its final test accuracy, the ledger's epsilon, upload and run time (sigma is
    each client's own, calibrated from its schedule, and not in the history)."""
    rows = []
    for (clients, eps, rate, seed), run in histories.sort_values("round").groupby(["clients", "epsilon", "r*", "seed"]):
        last = run.iloc[-1]
        rows.append({
            "clients": clients, "epsilon": eps, "r*": rate, "seed": seed, "rounds": int(last["round"]),
            "test_accuracy": last["test-accuracy"], "ledger_epsilon": last["epsilon-max"],
            "megabits_up_per_round": run["bytes-up"].mean() * 8 / 1e6,
            "run_seconds": last["run-seconds"],
        })
    return pd.DataFrame(rows)


def summary(histories: pd.DataFrame) -> pd.DataFrame:
    """Final accuracy per (clients, eps, r*) over seeds, the paper's Table 2 beside it, and upload."""
    table = summarise(histories, ["clients", "epsilon", "r*"], last_k=1)
    # the paper trains one model on all the data: its figures stand beside the one-client rows only
    table["paper (DP-CNN/S, tuned)"] = [
        PAPER[e][r > 0] / 100 if c == 1 and e in PAPER else float("nan")
        for c, e, r in zip(table["clients"], table["epsilon"], table["r*"])
    ]
    table["megabits-up per round"] = [
        histories[(histories["clients"] == c) & (histories["epsilon"] == e) & (histories["r*"] == r)]["bytes-up"].mean() * 8 / 1e6
        for c, e, r in zip(table["clients"], table["epsilon"], table["r*"])
    ]
    return table


if __name__ == "__main__":
    main()
