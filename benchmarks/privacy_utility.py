"""Accuracy against epsilon for the client-level private strategies, per privacy model.

Fashion-MNIST, the small CNN, 1,000 IID clients (60 examples each), about 100 a round,
user-level (eps, delta = 1e-5). ``local``: every client noises its own message, charged at
sample rate 1; ``central``: Poisson cohorts at q = 0.1, the server noises the bounded sum once;
``distributed``: the same noise as Skellam shares under secure aggregation. eps = inf is the
same run without noise.

Tuning budget, equal for every method: the four settings of :data:`TUNING` (chosen before the
grid ran, by the scale of each method's update: the error-compensation step beta of alpha-NormEC
and its counterpart in Clip21, the threshold tau; the server step of DP-NSGD; the clipping norm of
DP-FedAvg with server steps scaled to it), each at every (privacy model, eps); the table keeps the
better one per cell, chosen on the reported metric (optimistic for every method alike).
Everything else is each method's default (alpha 0.1; DP-FedAvg one local epoch at client-lr 0.05,
batch 32).

    python -m benchmarks.privacy_utility                       # 100 rounds, eps {2, 8, inf}, central
    python -m benchmarks.privacy_utility --full                # eps {1, 2, 4, 8, inf}, local and central
    python -m benchmarks.privacy_utility --rounds 200 --best-of results/privacy_utility_best.csv --epsilons 8 --merge
                                                               # each cell's best setting again, 200 rounds
    python -m benchmarks.privacy_utility --models distributed --best-of results/privacy_utility_best.csv --best-model central --merge
                                                               # distributed DP at central's best settings
    python -m benchmarks.privacy_utility --best-of docs/results/privacy_utility_best.csv --epsilons 8 --models central \\
        --first-seed 1 --seeds 3 --eval-samples 0 --out results/confirm/privacy_utility.csv
                                                               # the chosen settings on fresh seeds and the whole test set
    python -m benchmarks.privacy_utility --quick               # a smoke test: 100 clients, 5 rounds
    python -m benchmarks.privacy_utility --merge --epsilons 1 4 --models central   # add cells to the table

Writes ``results/privacy_utility.csv`` (one row per run: strategy, privacy_model, num_clients,
clients_per_round, epsilon, delta, noise_multiplier, rounds, test_accuracy, seed, setting,
server_lr, seconds, bytes_up_per_client), ``results/privacy_utility_best.csv`` (the tuned table),
``results/privacy_utility.png`` and, updated after every run, the per-round
``results/privacy_utility_histories.csv``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import (
    base_parser,
    input_table,
    markdown_table,
    new_figure,
    non_negative_int,
    output_file,
    positive_float,
    run_grid,
    save_figure,
)
from fl_dp.config import RunConfig
from fl_dp.privacy_policy import resolve_noise_multiplier

RESULTS = Path(__file__).parents[1] / "results"
STRATEGIES: dict[str, dict[str, Any]] = {
    "alpha-normec": dict(strategy="alpha-normec", alpha=0.1),
    "dp-normalized-sgd": dict(strategy="dp-normalized-sgd", alpha=0.1),
    "clip21": dict(strategy="clip21"),
    "dp-fedavg": dict(strategy="dp-fedavg", client_lr=0.05, local_epochs=1, batch_size=32),
    # Fed-alpha-NormEC: alpha-normec on the pseudo-gradient of DP-FedAvg's local work (2 steps of 32
    # at client-lr 0.05 = one epoch of 60 examples), fixed before its first run, not tuned
    "fed-alpha-normec": dict(strategy="alpha-normec", alpha=0.1, local_steps=2, client_lr=0.05, batch_size=32),
    # the alpha-NormEC paper's server-side normalization, x -= server-lr * G / ||G||: a step of fixed
    # length, so the noise G carries turns the direction but never lengthens the step
    "normec-server-normalized": dict(strategy="alpha-normec", alpha=0.1, server_normalize=True),
}
#: four settings per method (the same budget for every method), fixed before any run of this grid
TUNING: dict[str, tuple[dict[str, float], ...]] = {
    "alpha-normec": tuple(dict(beta=b, server_lr=lr) for b, lr in ((1.0, 0.5), (0.3, 0.5), (0.3, 1.0), (0.1, 2.0))),
    "clip21": tuple(dict(clip=c, server_lr=lr) for c, lr in ((1.0, 0.5), (0.3, 0.5), (0.3, 1.0), (0.1, 2.0))),
    "dp-normalized-sgd": tuple(dict(server_lr=lr) for lr in (0.5, 1.0, 2.0, 4.0)),
    "dp-fedavg": tuple(dict(clip=c, server_lr=lr) for c, lr in ((1.0, 1.0), (0.3, 3.0), (0.1, 3.0), (0.1, 10.0))),
}
TUNING["fed-alpha-normec"] = TUNING["normec-server-normalized"] = TUNING["alpha-normec"]
TASK = dict(dataset="fashion-mnist", batch_size=64, eval_samples=2000, delta=1e-5)
FULL_EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)
COLUMNS = [
    "strategy", "privacy_model", "num_clients", "clients_per_round", "epsilon", "delta", "noise_multiplier", "rounds",
    "test_accuracy", "seed", "setting", "server_lr", "seconds", "bytes_up_per_client", "model",
]
RUN_KEY = ["strategy", "privacy_model", "epsilon", "setting", "rounds", "seed", "model"]
#: the same key in the per-round histories' column names
HISTORY_KEY = ["strategy", "privacy-model", "epsilon", "setting", "rounds", "seed", "model"]
#: the network of every run written before tables had a model column
FIRST_MODEL = "cnn"


def run_key(cfg: RunConfig, labels: dict[str, Any]) -> tuple[Any, ...]:
    """A job's values of :data:`HISTORY_KEY`."""
    return (
        labels["strategy"], cfg.privacy_model, labels["epsilon"], labels["setting"], cfg.num_server_rounds, cfg.seed, cfg.model
    )


def with_model(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``model`` column: tables written before it existed are of :data:`FIRST_MODEL`."""
    if "model" not in frame.columns:
        return frame.assign(model=FIRST_MODEL)
    return frame.assign(model=frame["model"].fillna(FIRST_MODEL))


def setting_label(setting: dict[str, float]) -> str:
    """``beta=0.3 server-lr=1``: a setting as the run-config keys it sets."""
    return " ".join(f"{key.replace('_', '-')}={value:g}" for key, value in setting.items())


def parse_setting(label: str) -> dict[str, float]:
    return {key.replace("-", "_"): float(value) for key, value in (item.split("=") for item in label.split())}


def config(
    strategy: str,
    privacy_model: str,
    eps: float,
    setting: dict[str, float],
    seed: int,
    scale: dict[str, int],
    eval_samples: int | None = None,
    model: str = FIRST_MODEL,
) -> RunConfig:
    settings = {**TASK, "model": model, **STRATEGIES[strategy], **setting}
    if eval_samples is not None:
        settings["eval_samples"] = eval_samples
    return RunConfig(
        privacy_model=privacy_model,
        target_epsilon=0.0 if math.isinf(eps) else eps,
        seed=seed,
        eval_every=max(1, scale["rounds"] // 10),
        num_clients=scale["clients"],
        clients_per_round=scale["per_round"],
        num_server_rounds=scale["rounds"],
        **settings,
    )


def jobs(
    cells: list[tuple[str, str, float]],
    seeds: int,
    scale: dict[str, int],
    settings: dict[tuple[str, str, float], list[dict[str, float]]] | None = None,
    first_seed: int = 0,
    eval_samples: int | None = None,
    model: str = FIRST_MODEL,
) -> list[tuple[RunConfig, dict[str, Any]]]:
    """(config, labels) for every (strategy, privacy model, eps) cell, setting and seed (``first_seed``
    onwards) of ``model``; ``settings`` replaces the tuning grid of a cell (e.g. its best setting only)."""
    grid = []
    for strategy, privacy_model, eps in cells:
        cell_settings = (settings or {}).get((strategy, privacy_model, eps), list(TUNING[strategy]))
        for setting in cell_settings:
            for seed in range(first_seed, first_seed + seeds):
                cfg = config(strategy, privacy_model, eps, setting, seed, scale, eval_samples, model)
                # the method's name (a variant of a strategy has its own) becomes the history's strategy column
                labels = {"strategy": strategy, "epsilon": eps, "setting": setting_label(setting), "model": model}
                grid.append((cfg, {**labels, "rounds": cfg.num_server_rounds}))
    return grid


def rows_of(histories: pd.DataFrame, grid: list[tuple[RunConfig, dict[str, Any]]]) -> pd.DataFrame:
    """One row per run in the issue's columns (accuracy of the final model)."""
    rows = []
    for cfg, labels in grid:
        run = histories[
            (histories["strategy"] == labels["strategy"])
            & (histories["privacy-model"] == cfg.privacy_model)
            & (histories["epsilon"] == labels["epsilon"])
            & (histories["setting"] == labels["setting"])
            & (histories["rounds"] == cfg.num_server_rounds)
            & (histories["seed"] == cfg.seed)
            & (histories["model"] == cfg.model)
        ].sort_values("round")
        last = run.iloc[-1]
        rows.append({
            "strategy": labels["strategy"],
            "privacy_model": cfg.privacy_model,
            "num_clients": cfg.num_clients,
            "clients_per_round": cfg.clients_per_round,
            "epsilon": labels["epsilon"],
            "delta": cfg.delta,
            "noise_multiplier": resolve_noise_multiplier(cfg),
            "rounds": cfg.num_server_rounds,
            "test_accuracy": float(last["test-accuracy"]),
            "seed": cfg.seed,
            "setting": labels["setting"],
            "server_lr": cfg.server_lr,
            "seconds": float(last["run-seconds"]),
            "bytes_up_per_client": bytes_per_client(run),
            "model": cfg.model,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def bytes_per_client(run: pd.DataFrame) -> float:
    """Mean bytes one contributing client sends a round (a distributed share counts at its ring width)."""
    sent = run[run["accepted"] > 0]
    return float((sent["bytes-up"] / sent["accepted"]).mean()) if len(sent) else math.nan


def finished_runs(
    histories: pd.DataFrame, grid: list[tuple[RunConfig, dict[str, Any]]]
) -> tuple[pd.DataFrame, list[tuple[RunConfig, dict[str, Any]]]]:
    """The histories of the runs that reached their last round, and the grid's jobs still to run."""
    histories = with_model(histories).drop_duplicates(subset=HISTORY_KEY + ["round"], keep="last")
    last_rounds = histories[histories["round"] == histories["rounds"]]
    complete = {tuple(k) for k in last_rounds[HISTORY_KEY].itertuples(index=False)}
    todo = [(cfg, labels) for cfg, labels in grid if run_key(cfg, labels) not in complete]
    kept = histories[[tuple(k) in complete for k in histories[HISTORY_KEY].itertuples(index=False)]]
    return kept.reset_index(drop=True), todo


def merged(earlier: pd.DataFrame, latest: pd.DataFrame) -> pd.DataFrame:
    """Rows of both grids; where a run (strategy, privacy model, eps, setting, rounds, seed, network) is in
    both, the latest."""
    both = pd.concat([with_model(earlier), latest], ignore_index=True)
    return both.drop_duplicates(subset=RUN_KEY, keep="last").reset_index(drop=True)


def best_per_cell(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per setting, then the better setting per (strategy, model, eps, rounds)."""
    by = ["strategy", "privacy_model", "epsilon", "rounds", "setting"]
    mean = runs.groupby(by, dropna=False).agg(
        test_accuracy=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
        seeds=("seed", "count"),
        noise_multiplier=("noise_multiplier", "first"),
        server_lr=("server_lr", "first"),
    ).reset_index()
    best = mean.sort_values("test_accuracy").groupby(["strategy", "privacy_model", "epsilon", "rounds"]).tail(1)
    return best.sort_values(["privacy_model", "rounds", "epsilon", "strategy"]).reset_index(drop=True)


def best_settings(best_csv: Path, rounds: int | None = None) -> dict[tuple[str, str, float], list[dict[str, float]]]:
    """Each cell's best setting in an earlier table (of ``rounds`` rounds where given)."""
    best = pd.read_csv(best_csv)
    if rounds is not None and (best["rounds"] == rounds).any():
        best = best[best["rounds"] == rounds]
    best = best.sort_values("rounds").groupby(["strategy", "privacy_model", "epsilon"]).tail(1)
    return {(r.strategy, r.privacy_model, float(r.epsilon)): [parse_setting(r.setting)] for r in best.itertuples(index=False)}


def plot(best: pd.DataFrame, path: Path) -> None:

    epsilons = sorted(best["epsilon"].unique())
    labels = ["inf" if math.isinf(e) else f"{e:g}" for e in epsilons]
    fig, ax = new_figure(figsize=(6.5, 4))
    # one colour per method, one marker per number of rounds, one line style per privacy model
    colours = {strategy: f"C{i}" for i, strategy in enumerate(sorted(best["strategy"].unique()))}
    markers = {rounds: marker for rounds, marker in zip(sorted(best["rounds"].unique()), "o^sDv")}
    for (strategy, model, rounds), rows in best.groupby(["strategy", "privacy_model", "rounds"]):
        rows = rows.set_index("epsilon").reindex(epsilons)
        style = {"central": "-", "distributed": "--"}.get(model, ":")
        ax.plot(range(len(epsilons)), rows["test_accuracy"], color=colours[strategy], marker=markers.get(rounds, "o"),
                linestyle=style, label=f"{strategy} ({model}, {rounds} rounds)")
    ax.set_xticks(range(len(epsilons)), labels)
    ax.set_xlabel("epsilon (user level, delta = 1e-5)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    save_figure(fig, ax, path, legend_fontsize=6)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--full", action="store_true", help="eps {1, 2, 4, 8, inf}, local and central")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--epsilons", nargs="+", type=positive_float, default=None, help="override the epsilons (inf for no noise)")
    parser.add_argument("--models", nargs="+", default=None, choices=["local", "central", "distributed"], help="override the privacy models")
    parser.add_argument("--best-of", type=input_table("strategy", "privacy_model", "epsilon", "rounds", "setting"), default=None, help="run only each cell's best setting in this earlier best table")
    parser.add_argument("--best-model", default=None, choices=["local", "central", "distributed"],
                        help="with --best-of: take every cell's setting from this privacy model's cells (e.g. distributed from central)")
    parser.add_argument("--merge", action="store_true", help="keep the runs already in --out (and its histories) and add or replace this grid's")
    parser.add_argument("--resume", action="store_true",
                        help="skip the runs that --out's histories already hold to their last round (a grid stopped early)")
    parser.add_argument("--first-seed", type=non_negative_int, default=0,
                        help="seeds from this one on (with --best-of: fresh seeds, to confirm settings chosen on seed 0)")
    parser.add_argument("--eval-samples", type=non_negative_int, default=None,
                        help=f"test images each evaluation uses (default {TASK['eval_samples']}; 0: the whole test set)")
    parser.add_argument("--model", default=FIRST_MODEL, choices=["cnn", "cnn-tanh", "dp-cnn"],
                        help="the network every method trains (cnn-tanh: the same CNN with tanh activations; "
                        "dp-cnn: the DP literature's tanh CNN of Papernot et al. and Tramer and Boneh)")
    parser.add_argument("--out", type=output_file, default=RESULTS / "privacy_utility.csv")
    args = parser.parse_args()
    if args.quick:
        scale = dict(clients=100, per_round=10, rounds=args.rounds or 5)
        cells = [(s, m, e) for s in args.strategies for m in ("local", "central") for e in (8.0, math.inf)]
    elif args.full:
        scale = dict(clients=1000, per_round=100, rounds=args.rounds or 100)
        cells = [(s, m, e) for s in args.strategies for m in ("local", "central") for e in FULL_EPSILONS]
    else:
        scale = dict(clients=1000, per_round=100, rounds=args.rounds or 100)
        cells = [(s, "central", e) for s in args.strategies for e in (8.0, 2.0, math.inf)]
    if args.epsilons or args.models:
        epsilons = args.epsilons or sorted({e for _, _, e in cells})
        models = args.models or sorted({m for _, m, _ in cells})
        cells = [(s, m, e) for s in args.strategies for m in models for e in epsilons]
    settings = None
    if args.best_of is not None:
        best = best_settings(args.best_of, rounds=scale["rounds"])
        settings = {(s, m, e): best[(s, args.best_model or m, e)] for s, m, e in cells if (s, args.best_model or m, e) in best}
        cells = [cell for cell in cells if cell in settings]
    seeds = 1 if args.quick else args.seeds
    grid = jobs(cells, seeds, scale, settings, first_seed=args.first_seed, eval_samples=args.eval_samples, model=args.model)
    print(f"{len(grid)} runs on {args.workers} workers", flush=True)
    started = time.perf_counter()
    histories_csv = args.out.with_name(args.out.stem + "_histories.csv")
    earlier_runs, earlier_histories = None, None
    if args.merge and args.out.exists() and histories_csv.exists():
        earlier_runs, earlier_histories = pd.read_csv(args.out), with_model(pd.read_csv(histories_csv))
        rerun = {run_key(cfg, labels) for cfg, labels in grid}
        key = earlier_histories[HISTORY_KEY].itertuples(index=False)
        earlier_histories = earlier_histories[[tuple(k) not in rerun for k in key]]
    todo = grid
    if args.resume and histories_csv.exists():
        earlier_histories, todo = finished_runs(pd.concat([earlier_histories, pd.read_csv(histories_csv)]), grid)
        print(f"resuming: {len(todo)} of {len(grid)} runs left", flush=True)
    histories = run_grid(todo, args.workers, partial_csv=histories_csv, prior=earlier_histories)
    runs = rows_of(histories, grid)
    if earlier_runs is not None:
        runs = merged(earlier_runs, runs)
    best = best_per_cell(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out, index=False)
    best.to_csv(args.out.with_name(args.out.stem + "_best.csv"), index=False)
    plot(best, args.out.with_suffix(".png"))
    print(markdown_table(best))
    print(f"{len(grid)} runs in {time.perf_counter() - started:.0f} s; written to {args.out} and beside it")


if __name__ == "__main__":
    main()
