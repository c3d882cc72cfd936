"""EF21 vs ||EF21|| on the deterministic experiments of seed 001.

Logistic regression with the non-convex regulariser (lambda = 0.1) on breast cancer
(d = 31 with the bias) and the synthetic set (d = 21); n in {1, 5, 10} clients (IID split),
full local gradients, top-k with k in {1, ceil(5% d)}. EF21 runs at its theory step size
(from L, L_i and k/d); ||EF21|| at gamma0 / sqrt(T + 1) for gamma0 in {0.1, 1}.
Prints the rounds (and megabits sent up) each needs to bring ||grad f(x)|| below each target,
and writes gradient norm vs rounds and vs bits.

    python -m benchmarks.ef21             # about 5 minutes on 2 cores
    python -m benchmarks.ef21 --quick
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


def _run(job: dict) -> pd.DataFrame:
    torch.set_num_threads(1)
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
        num_server_rounds=job["rounds"],
        eval_samples=0,
        server_lr=1.0,  # replaced below once the step size is known
    )
    probe = InProcessFederation(cfg)
    objectives = [client.objective for client in probe.clients.values()]
    dim = probe.server.dim
    L, L_tilde = ef21_logistic_constants([o.data.x for o in objectives], LAMBDA)
    if job["method"] == "EF21":
        gamma = ef21_stepsize(L, L_tilde, job["k"], dim)
        cfg = cfg.replace(server_lr=gamma)
    else:
        gamma = job["gamma0"]
        cfg = cfg.replace(strategy="ef21-norm", server_lr=gamma)

    def gradient_norm(x: torch.Tensor) -> dict[str, float]:
        grad = torch.stack([o.loss_and_grad(x)[1] for o in objectives]).mean(0)
        return {"grad-norm": float(torch.linalg.vector_norm(grad))}

    fed = InProcessFederation(cfg, evaluate_fn=gradient_norm)
    x0_norm = gradient_norm(fed.server.x)["grad-norm"]
    started = time.perf_counter()
    history = fed.run()
    history = pd.concat([pd.DataFrame([{"round": 0, "grad-norm": x0_norm, "bytes-up": 0}]), history], ignore_index=True)
    history["bits-up-cumulative"] = history["bytes-up"].cumsum() * 8
    for key in ("dataset", "n", "k", "method"):
        history[key] = job[key]
    history["gamma"] = gamma
    history["L"], history["L-tilde"], history["d"] = L, L_tilde, dim
    history["run-seconds"] = time.perf_counter() - started
    return history[["dataset", "n", "k", "d", "method", "gamma", "L", "L-tilde", "round", "grad-norm", "bytes-up", "bits-up-cumulative", "run-seconds"]]


def rounds_to_target(histories: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for key, run in histories.groupby(["dataset", "n", "k", "method"], sort=True):
        row = dict(zip(["dataset", "n", "k", "method"], key))
        row["gamma"] = run["gamma"].iloc[0]
        for target in TARGETS:
            hit = run[run["grad-norm"] <= target]
            row[f"rounds to {target:g}"] = int(hit["round"].iloc[0]) if len(hit) else math.nan
            row[f"Mbit to {target:g}"] = hit["bits-up-cumulative"].iloc[0] / 1e6 if len(hit) else math.nan
        row["final grad-norm"] = run["grad-norm"].iloc[-1]
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
                sub = histories[(histories["dataset"] == dataset) & (histories["n"] == n)]
                for (method, k), run in sub.groupby(["method", "k"]):
                    ax.semilogy(run[xaxis].clip(lower=1 if xaxis != "round" else 0), run["grad-norm"], label=f"{method}, k={k}")
                if xaxis != "round":
                    ax.set_xscale("log")
                ax.set_title(f"{dataset}, n={n}")
                ax.set_xlabel("bits sent up (all clients)" if xaxis != "round" else "round")
                ax.set_ylabel("||grad f(x)||")
                ax.grid(alpha=0.3)
            save_figure(fig, axes[0][-1], out / f"grad_norm_vs_{name}.png", legend_fontsize=7)

    return draw


def main() -> None:
    parser = base_parser(__doc__)
    args = parser.parse_args()
    rounds = args.rounds or (200 if args.quick else 2000)
    datasets = ["breast-cancer"] if args.quick else ["breast-cancer", "synthetic"]
    ns = [5] if args.quick else [1, 5, 10]
    jobs = []
    for dataset, n in itertools.product(datasets, ns):
        d = 31 if dataset == "breast-cancer" else 21
        for k in sorted({1, math.ceil(0.05 * d)}):
            base = {"dataset": dataset, "n": n, "k": k, "rounds": rounds}
            jobs.append({**base, "method": "EF21"})
            for gamma0 in (0.1, 1.0):
                jobs.append({**base, "method": f"‖EF21‖ g0={gamma0:g}", "gamma0": gamma0})
    print(f"{len(jobs)} runs of {rounds} rounds on {args.workers} workers", flush=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        histories = pd.concat(list(pool.map(_run, jobs)), ignore_index=True)
    table = rounds_to_target(histories)
    out = write_outputs("ef21" + ("-quick" if args.quick else ""), histories, table, plot(histories))
    print(markdown_table(table))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
