"""EF21 vs ||EF21|| on the deterministic logistic-regression experiments of seed 001, by the paper's protocol.

Logistic regression with the non-convex regulariser (lambda = 0.1) on breast cancer
(d = 31 with the bias) and the synthetic set (d = 21); n in {1, 5, 10} clients (IID split),
full local gradients, top-k with k in {1, ceil(5% d)}, x_0 drawn from N(0, I) per seed (as the
paper does). The paper's step rules, with the same budget of two candidates for each method:

- EF21 at its theory step size (from L, L_i and k/d; Richtarik et al. 2021, Theorem 1), and at
  4 times it (a constant step: its rounds to a target are read off one run of ``--rounds``);
- ||EF21|| at gamma0 / sqrt(T + 1), gamma0 in {0.1, 1}, where, as in the paper, T is the
  smallest horizon of :data:`HORIZONS` whose run reaches the target (the step depends on T, so
  each horizon is its own run).

Prints, per (dataset, n, k, method, setting), the mean over seeds of the rounds (and megabits sent
up) to bring ||grad f(x)|| below each target, with how many seeds reached it, and per cell the
better setting of each method and their ratio; writes gradient norm vs rounds and vs bits.

    python -m benchmarks.ef21 --full          # the paper's regime, also the default: 3 seeds (47 min on 2 cores)
    python -m benchmarks.ef21 --quick         # breast cancer, n = 5, one seed, short horizons
"""

from __future__ import annotations

import itertools
import math
import time
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import torch

from benchmarks.common import base_parser, markdown_table, new_figure, save_figure, write_outputs
from fl_dp.config import RunConfig
from fl_dp.inprocess import InProcessFederation
from fl_dp.stepsizes import ef21_logistic_constants, ef21_stepsize

LAMBDA = 0.1
TARGETS = (1e-2, 1e-3)
#: the horizons T searched for ||EF21|| (the paper searches a grid of T; this one is coarser at large T)
HORIZONS = (50, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000)
EF21_STEP_MULTIPLIERS = (1.0, 4.0)
GAMMA0 = (0.1, 1.0)
KEYS = ["dataset", "n", "k", "method", "setting", "seed"]


def _federation(job: dict, rounds: int) -> tuple[InProcessFederation, float, dict[str, float]]:
    """The run of ``job`` over ``rounds`` rounds from its seed's x_0: (federation, step size, constants)."""
    cfg = RunConfig(
        strategy="ef21",
        dataset=job["dataset"],
        model="logreg",
        num_clients=job["n"],
        clients_per_round=job["n"],
        batch_size=0,
        regularizer_lambda=LAMBDA,
        compressor="top-k",
        compress_k=job["k"],
        num_server_rounds=rounds,
        eval_samples=0,
        server_lr=1.0,  # replaced below once the step size is known
    )
    probe = InProcessFederation(cfg)
    objectives = [client.objective for client in probe.clients.values()]
    dim = probe.server.dim
    L, L_tilde = ef21_logistic_constants([o.data.x for o in objectives], LAMBDA)
    if job["method"] == "EF21":
        gamma = job["multiplier"] * ef21_stepsize(L, L_tilde, job["k"], dim)
        cfg = cfg.replace(server_lr=gamma)
    else:
        gamma = job["gamma0"]
        cfg = cfg.replace(strategy="ef21-norm", server_lr=gamma)

    def gradient_norm(x: torch.Tensor) -> dict[str, float]:
        grad = torch.stack([o.loss_and_grad(x)[1] for o in objectives]).mean(0)
        return {"grad-norm": float(torch.linalg.vector_norm(grad))}

    fed = InProcessFederation(cfg, evaluate_fn=gradient_norm)
    fed.server.x = torch.randn(dim, generator=torch.Generator().manual_seed(job["seed"]), dtype=fed.server.x.dtype)
    return fed, gamma, {"L": L, "L-tilde": L_tilde, "d": dim}


def _history(job: dict, rounds: int) -> pd.DataFrame:
    fed, gamma, constants = _federation(job, rounds)
    x0_norm = fed.evaluate_fn(fed.server.x)["grad-norm"]
    started = time.perf_counter()
    history = fed.run()
    history = pd.concat([pd.DataFrame([{"round": 0, "grad-norm": x0_norm, "bytes-up": 0}]), history], ignore_index=True)
    history["bits-up-cumulative"] = history["bytes-up"].cumsum() * 8
    for key in KEYS:
        history[key] = job[key]
    history["horizon"] = rounds
    history["gamma"] = gamma
    for key, value in constants.items():
        history[key] = value
    history["run-seconds"] = time.perf_counter() - started
    columns = KEYS + ["horizon", "d", "gamma", "L", "L-tilde", "round", "grad-norm", "bytes-up", "bits-up-cumulative"]
    columns.append("run-seconds")
    return history[columns]


def first_hits(history: pd.DataFrame) -> dict[float, tuple[int, float]]:
    """Per target reached in ``history``: (first round at or below it, bits sent up until then)."""
    hits = {}
    for target in TARGETS:
        hit = history[history["grad-norm"] <= target]
        if len(hit):
            hits[target] = (int(hit["round"].iloc[0]), float(hit["bits-up-cumulative"].iloc[0]))
    return hits


def _run(job: dict) -> tuple[pd.DataFrame, list[dict]]:
    """(the histories kept, one row per target) for one (dataset, n, k, method, setting, seed)."""
    torch.set_num_threads(1)
    if job["method"] == "EF21":
        history = _history(job, job["rounds"])
        runs = [history]
        hits = {target: (*hit, job["rounds"]) for target, hit in first_hits(history).items()}
    else:
        # the paper's search: the smallest horizon T whose run (at gamma0 / sqrt(T + 1)) reaches the target
        runs, hits = [], {}
        for horizon in job["horizons"]:
            history = _history(job, horizon)
            runs.append(history)
            for target, hit in first_hits(history).items():
                hits.setdefault(target, (*hit, horizon))
            if len(hits) == len(TARGETS):
                break
    rows = []
    for target in TARGETS:
        rounds, bits, horizon = hits.get(target, (math.nan, math.nan, math.nan))
        rows.append({**{key: job[key] for key in KEYS}, "gamma": runs[-1]["gamma"].iloc[0], "target": target,
                     "rounds": rounds, "Mbit": bits / 1e6, "horizon": horizon})
    # for the plots: the longest run (the one that reached the most, or the whole search's last)
    return runs[-1], rows


def rounds_to_target(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, n, k, method, setting) and target: mean rounds and Mbit over the seeds that reached it."""
    table = rows.groupby(["dataset", "n", "k", "method", "setting", "target"], sort=True).agg(
        rounds=("rounds", "mean"), rounds_std=("rounds", "std"), Mbit=("Mbit", "mean"),
        reached=("rounds", "count"), seeds=("seed", "count"), gamma=("gamma", "mean"),
    ).reset_index()
    return table


def head_to_head(table: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, n, k, target): each method's better setting (reached on every seed, then fewer rounds)
    and the ratio of ||EF21||'s rounds to EF21's."""
    rows = []
    for (dataset, n, k, target), cell in table.groupby(["dataset", "n", "k", "target"], sort=True):
        row = {"dataset": dataset, "n": n, "k": k, "target": target}
        for method, name in (("EF21", "EF21"), ("‖EF21‖", "norm")):
            runs = cell[(cell["method"] == method) & (cell["reached"] == cell["seeds"])]
            if len(runs):
                best = runs.sort_values("rounds").iloc[0]
                row[f"{name} setting"], row[f"{name} rounds"], row[f"{name} Mbit"] = best["setting"], best["rounds"], best["Mbit"]
            else:
                row[f"{name} setting"], row[f"{name} rounds"], row[f"{name} Mbit"] = "not reached", math.nan, math.nan
        row["rounds ratio (norm / EF21)"] = row["norm rounds"] / row["EF21 rounds"]
        rows.append(row)
    return pd.DataFrame(rows)


def plot(histories: pd.DataFrame):
    def draw(out):

        datasets = sorted(histories["dataset"].unique())
        ns = sorted(histories["n"].unique())
        for xaxis, name in (("round", "rounds"), ("bits-up-cumulative", "bits")):
            fig, axes = new_figure(len(datasets), len(ns), figsize=(4.5 * len(ns), 3.4 * len(datasets)), squeeze=False)
            for (i, dataset), (j, n) in itertools.product(enumerate(datasets), enumerate(ns)):
                ax = axes[i][j]
                # one seed's runs (||EF21||: the last horizon its search ran)
                first_seed = histories["seed"] == histories["seed"].min()
                sub = histories[(histories["dataset"] == dataset) & (histories["n"] == n) & first_seed]
                for (method, setting, k), run in sub.groupby(["method", "setting", "k"]):
                    label = f"{method} {setting}, k={k}"
                    ax.semilogy(run[xaxis].clip(lower=1 if xaxis != "round" else 0), run["grad-norm"], label=label)
                if xaxis != "round":
                    ax.set_xscale("log")
                ax.set_title(f"{dataset}, n={n}")
                ax.set_xlabel("bits sent up (all clients)" if xaxis != "round" else "round")
                ax.set_ylabel("||grad f(x)||")
                ax.grid(alpha=0.3)
            save_figure(fig, axes[0][-1], out / f"grad_norm_vs_{name}.png", legend_fontsize=7)

    return draw


def grid(datasets: list[str], ns: list[int], seeds: int, rounds: int) -> list[dict]:
    """One job per (dataset, n, k, seed) and candidate of each method, with horizons up to ``rounds``."""
    horizons = tuple(h for h in HORIZONS if h <= rounds)
    jobs = []
    for dataset, n, seed in itertools.product(datasets, ns, range(seeds)):
        d = 31 if dataset == "breast-cancer" else 21
        for k in sorted({1, math.ceil(0.05 * d)}):
            base = {"dataset": dataset, "n": n, "k": k, "seed": seed, "rounds": rounds, "horizons": horizons}
            for multiplier in EF21_STEP_MULTIPLIERS:
                jobs.append({**base, "method": "EF21", "setting": f"{multiplier:g}x theory", "multiplier": multiplier})
            for gamma0 in GAMMA0:
                jobs.append({**base, "method": "‖EF21‖", "setting": f"gamma0={gamma0:g}", "gamma0": gamma0})
    return jobs


def run(jobs: list[dict], workers: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(histories for the plots, rounds to each target per setting, the head-to-head table)."""
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_run, jobs))
    histories = pd.concat([history for history, _ in results], ignore_index=True)
    table = rounds_to_target(pd.DataFrame([row for _, rows in results for row in rows]))
    return histories, table, head_to_head(table)


def main() -> None:
    parser = base_parser(__doc__)
    parser.set_defaults(seeds=3)
    parser.add_argument("--full", action="store_true", help="the paper's regime (also the default without --quick)")
    args = parser.parse_args()
    if args.full and args.quick:
        parser.error("--full and --quick: choose one")
    rounds = args.rounds or (300 if args.quick else max(HORIZONS))
    datasets = ["breast-cancer"] if args.quick else ["breast-cancer", "synthetic"]
    jobs = grid(datasets, [5] if args.quick else [1, 5, 10], 1 if args.quick else args.seeds, rounds)
    print(f"{len(jobs)} searches (up to {rounds} rounds) on {args.workers} workers", flush=True)
    started = time.perf_counter()
    histories, table, versus = run(jobs, args.workers)
    out = write_outputs("ef21" + ("-quick" if args.quick else ""), histories, table, plot(histories))
    versus.to_csv(out / "head_to_head.csv", index=False)
    (out / "head_to_head.md").write_text(markdown_table(versus))
    print(markdown_table(table))
    print(markdown_table(versus))
    print(f"{len(jobs)} searches in {time.perf_counter() - started:.0f} s; written to {out}")


if __name__ == "__main__":
    main()
