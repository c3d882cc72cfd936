"""Audited lower bounds on epsilon against the ledger's epsilon, for every private strategy and privacy model.

One-run audits (:mod:`fl_dp.audit`) of runs on Fashion-MNIST with the small CNN, delta = 1e-5:

- client-level, ``local``: 10 clients all in every round, 5 rounds, + gradient-canary clients
  (alpha-normec, dp-normalized-sgd, clip21, dp-fedavg, sign-vote with dp-sign);
- client-level, ``central``: 1,000 clients sampled at q = 0.1, 10 rounds, + canary clients;
- client-level, ``central`` at the regime of the privacy-utility benchmark (1,000 clients, q = 0.1,
  100 rounds), alpha-normec, 16,000 canaries: the run users train, where more rounds make the
  composed subsampled mechanism closer to a Gaussian one and the audit tighter than at 10 rounds;
- client-level, ``central`` without amplification (q = 1: 10 clients, all in each of 5 rounds), where
  the audit can be tight: alpha-normec, 16,000 canaries (the four strategies give the same scores by
  construction, see docs/privacy_audit.md);
- client-level, ``distributed`` (alpha-normec, dp-fedavg): as ``central`` at q = 0.1, the auditor seeing the
  decoded secure sum minus the other clients' noiseless messages;
- sample-level (dp-sgd, dp-sgd-rs): 10 clients, 5 rounds, gradient-canary samples in one client,
  with the run's Poisson batches (64 expected) and without subsampling (the batch is the whole
  client, q = 1), where the audit can be tight.

and the classical many-run Clopper-Pearson audit of one small configuration (breast cancer,
logistic regression, 2 clients, 3 rounds, one canary client per run) as a cross-check.

    python -m benchmarks.privacy_audit                 # the table in docs/privacy_audit.md (~35 min on 2 cores)
    python -m benchmarks.privacy_audit --full          # 4x the canaries, 2x the rounds
    python -m benchmarks.privacy_audit --quick         # smoke test (seconds)
    python -m benchmarks.privacy_audit --kinds local --canary-factor 4 --no-cross-check   # one kind, 4x the canaries
    python -m benchmarks.privacy_audit --ideal 100 16000 --family   # the textbook mechanism alone, also against its own curves

Writes ``results/privacy_audit.csv`` (strategy, privacy_model, target_epsilon, ledger_epsilon,
audited_epsilon_lower_bound, approx_dp_epsilon_lower_bound, confidence, canaries, runs, seconds,
ideal_mechanism_bound, method, sample_rate, kind: the SCALE entry) and ``results/privacy_audit.png`` (audited bound against the ledger's epsilon, diagonal).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.audit_family import family_epsilon_lower_bound, subsampled_gaussian_epsilon
from benchmarks.common import markdown_table, new_figure, non_negative_int, output_file, positive_float, positive_int, save_figure
from fl_dp.privacy_policy import resolve_noise_multiplier
from fl_dp.audit import audit_many_runs, audit_run, ideal_scores
from fl_dp.audit_bounds import best_one_run_bound
from fl_dp.config import RunConfig

RESULTS = Path(__file__).parents[1] / "results"
COLUMNS = [
    "strategy", "privacy_model", "target_epsilon", "ledger_epsilon", "audited_epsilon_lower_bound",
    "approx_dp_epsilon_lower_bound", "ideal_mechanism_bound", "confidence", "canaries", "runs", "seconds", "method",
    "sample_rate", "kind",
]
#: what makes a row one audited configuration: a rerun of it replaces the row under --merge
AUDIT_KEY = ["strategy", "privacy_model", "target_epsilon", "kind", "method"]
TASK = dict(dataset="fashion-mnist", model="cnn", batch_size=64, eval_samples=200, eval_every=10_000, delta=1e-5)
CLIENT_LEVEL = {
    "alpha-normec": dict(alpha=0.1, beta=1.0, server_lr=0.5),
    "dp-normalized-sgd": dict(alpha=0.1, server_lr=0.5),
    "clip21": dict(clip=1.0, server_lr=0.5),
    "dp-fedavg": dict(clip=1.0, client_lr=0.05, batch_size=32, server_lr=1.0),
}
LOCAL_ONLY = {"sign-vote": dict(sign_compressor="dp-sign", clip=1.0, server_lr=0.01)}
SAMPLE_LEVEL = {"dp-sgd": dict(client_lr=0.05), "dp-sgd-rs": dict(client_lr=0.05, rs_final_rate=0.7)}
#: an expected Poisson batch above any client's size: every sample in every step (q = 1)
WHOLE_CLIENT_BATCH = 100_000
EPSILONS = (1.0, 2.0, 4.0, 8.0)
#: (clients, clients per round, rounds, canaries) per kind of audit; --full: 4x canaries, 2x rounds
SCALE = {
    "local": (10, 10, 5, 16000),
    "central": (1000, 100, 10, 2000),
    "central-100-rounds": (1000, 100, 100, 16000),
    "central-full": (10, 10, 5, 16000),
    "sample": (10, 10, 5, 1000),
    "sample-full-batch": (10, 10, 5, 16000),
}
QUICK = {
    "local": (4, 4, 2, 200), "central": (40, 4, 3, 200), "central-100-rounds": (40, 4, 6, 200), "central-full": (4, 4, 2, 200),
    "sample": (4, 4, 1, 100), "sample-full-batch": (4, 4, 1, 100),
}
CROSS_CHECK = dict(
    dataset="breast-cancer", model="logreg", strategy="alpha-normec", privacy_model="local",
    num_clients=2, clients_per_round=2, server_lr=0.5, num_server_rounds=3, eval_every=10_000,
)


def cells(epsilons: tuple[float, ...]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, privacy model, strategy keys) of every audited configuration."""
    grid = [("local", "local", dict(strategy=s, **kw)) for s, kw in {**CLIENT_LEVEL, **LOCAL_ONLY}.items()]
    grid += [("central", "central", dict(strategy=s, **kw)) for s, kw in CLIENT_LEVEL.items()]
    normec = dict(strategy="alpha-normec", **CLIENT_LEVEL["alpha-normec"])
    grid += [(kind, "central", normec) for kind in ("central-100-rounds", "central-full")]
    grid += [("central", "distributed", dict(strategy=s, **CLIENT_LEVEL[s])) for s in ("alpha-normec", "dp-fedavg")]
    grid += [("sample", "local", dict(strategy=s, **kw)) for s, kw in SAMPLE_LEVEL.items()]
    grid += [("sample-full-batch", "local", dict(strategy=s, **kw, batch_size=WHOLE_CLIENT_BATCH)) for s, kw in SAMPLE_LEVEL.items()]
    return [(kind, model, dict(keys, target_epsilon=eps)) for kind, model, keys in grid for eps in epsilons]


def config(kind: str, privacy_model: str, keys: dict[str, Any], scale: dict[str, tuple[int, int, int, int]], rounds_factor: int) -> RunConfig:
    clients, per_round, rounds, _ = scale[kind]
    base = {**TASK, **keys}
    return RunConfig(
        **base, privacy_model=privacy_model, num_clients=clients, clients_per_round=per_round,
        num_server_rounds=rounds * rounds_factor, max_train_samples=60 * clients,
    )


def run(args: argparse.Namespace, earlier: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every cell of the grid, then the cross-check; the CSV (``earlier``'s rows first) is rewritten after every row."""
    scale = QUICK if args.quick else SCALE
    canary_factor, rounds_factor = (4, 2) if args.full else (1, 1)
    canary_factor = args.canary_factor or canary_factor
    epsilons = tuple(args.epsilons) if args.epsilons else ((2.0, 8.0) if args.quick else EPSILONS)
    rows = []
    for kind, privacy_model, keys in cells(epsilons):
        if (args.strategies and keys["strategy"] not in args.strategies) or (args.kinds and kind not in args.kinds):
            continue
        cfg = config(kind, privacy_model, keys, scale, rounds_factor)
        result = audit_run(cfg, scale[kind][3] * canary_factor, seed=args.seed)
        ideal = ideal_bound(cfg, result.members, args.seed)
        rows.append({**result.row(), "ideal_mechanism_bound": ideal, "method": "one-run", "sample_rate": cfg.client_sample_rate,
                     "kind": kind})
        _progress(rows, args.out, earlier)
    for eps in () if args.no_cross_check else (1.0, 2.0):
        cfg = RunConfig(**CROSS_CHECK, target_epsilon=eps, delta=1e-5)
        many = audit_many_runs(cfg, 40 if args.quick else args.cross_check_runs, seed=args.seed)
        rows.append({
            "strategy": cfg.strategy, "privacy_model": cfg.privacy_model, "target_epsilon": eps,
            "ledger_epsilon": many.ledger_epsilon, "audited_epsilon_lower_bound": many.epsilon,
            "approx_dp_epsilon_lower_bound": many.epsilon, "ideal_mechanism_bound": math.nan, "confidence": 0.95, "canaries": 1,
            "runs": many.runs, "seconds": many.seconds, "method": "many-run (Clopper-Pearson)", "sample_rate": 1.0, "kind": "many-run",
        })
        _progress(rows, args.out, earlier)
    return merged(earlier, pd.DataFrame(rows, columns=COLUMNS))


def merged(earlier: pd.DataFrame | None, latest: pd.DataFrame) -> pd.DataFrame:
    """``earlier``'s rows, then ``latest``'s; a configuration in both keeps only its latest row."""
    if earlier is None or earlier.empty:
        return latest
    rerun = set(latest[AUDIT_KEY].itertuples(index=False))
    kept = earlier[[key not in rerun for key in earlier[AUDIT_KEY].itertuples(index=False)]]
    return pd.concat([kept, latest], ignore_index=True)[COLUMNS]


def ideal_bound(cfg: RunConfig, members: Any, seed: int) -> float:
    """The audited bound the same attack gets against a textbook Gaussian mechanism of the run's sigma."""
    return _gaussian_curves_bound(cfg, ideal_scores(cfg, members, resolve_noise_multiplier(cfg), seed), members)


def _gaussian_curves_bound(cfg: RunConfig, scores: np.ndarray | None, members: Any) -> float:
    if scores is None:
        return math.nan
    return best_one_run_bound(list(scores), list(members), cfg.delta, two_sided=cfg.privacy_model == "local").gdp_epsilon


def ideal_table(sizes: list[tuple[int, int]], epsilon: float, seeds: int = 3, family: bool = False) -> pd.DataFrame:
    """The ideal reference alone (seconds each): the bound the attack gets against the textbook
    subsampled Gaussian mechanism of ``central`` at q = 0.1 and ``epsilon``, per (rounds, canaries),
    for ``seeds`` draws of the canaries' coins. ``family``: also the bound from the same scores
    against the composed subsampled Gaussian curves themselves (:mod:`benchmarks.audit_family`)
    and that mechanism's exact epsilon (PLD), the most any audit of it can show."""
    rows = []
    for rounds, canaries in sizes:
        keys = dict(strategy="alpha-normec", **CLIENT_LEVEL["alpha-normec"], target_epsilon=epsilon)
        cfg = config("central", "central", keys, {"central": (1000, 100, rounds, canaries)}, 1)
        sigma = resolve_noise_multiplier(cfg)
        for seed in range(seeds):
            members = np.random.default_rng([seed, 7]).random(canaries) < 0.5  # audit_run's coins
            scores = ideal_scores(cfg, members, sigma, seed)
            assert scores is not None  # alpha-normec under central
            row = {"rounds": rounds, "canaries": canaries, "seed": seed, "noise_multiplier": sigma,
                   "ideal_mechanism_bound": _gaussian_curves_bound(cfg, scores, members)}
            if family:
                shape = dict(noise_multiplier=sigma, sample_rate=cfg.client_sample_rate, rounds=rounds, delta=cfg.delta)
                row["ideal_family_bound"] = family_epsilon_lower_bound(list(scores), list(members), **shape)
                row["mechanism_epsilon"] = subsampled_gaussian_epsilon(sigma, cfg.client_sample_rate, rounds, cfg.delta)
            rows.append(row)
    return pd.DataFrame(rows)


def _progress(rows: list[dict[str, Any]], out: Path, earlier: pd.DataFrame | None) -> None:
    print(_line(rows[-1]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    merged(earlier, pd.DataFrame(rows, columns=COLUMNS)).to_csv(out, index=False)


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['strategy']:>17} {row['privacy_model']:>7} eps {row['target_epsilon']:g}: ledger {row['ledger_epsilon']:.3f}, "
        f"audited >= {row['audited_epsilon_lower_bound']:.3f} (any mechanism: {row['approx_dp_epsilon_lower_bound']:.3f}; "
        f"ideal Gaussian: {row['ideal_mechanism_bound']:.3f}), "
        f"{row['canaries']} canaries x {row['runs']} runs, {row['seconds']:.0f} s, {row['method']}"
    )


def plot(table: pd.DataFrame, path: Path) -> None:

    fig, ax = new_figure(figsize=(6, 5))
    top = float(table["ledger_epsilon"].max()) * 1.05
    ax.plot([0, top], [0, top], color="black", lw=1, label="bound = ledger (a bound above is a bug)")
    ax.plot([0, top], [0, top / 2], color="gray", lw=1, ls="--", label="half the ledger")
    markers = {"local": "o", "central": "s"}
    table = table.assign(kind=table["kind"].fillna(""))
    for (strategy, model, method, rate, kind), group in table.groupby(["strategy", "privacy_model", "method", "sample_rate", "kind"]):
        marker = "x" if method != "one-run" else markers.get(model, "o")
        where = "" if rate == 1 or model == "local" else f", q = {rate:g}"
        label = f"{strategy} ({model}{where}, {kind}, {method})"
        ax.plot(group["ledger_epsilon"], group["audited_epsilon_lower_bound"], marker=marker, ls=":", label=label)
    ax.set_xlabel("ledger epsilon (Opacus RDP)")
    ax.set_ylabel("audited lower bound on epsilon (95%)")
    ax.set_title("Privacy audit with canaries")
    save_figure(fig, ax, path, legend_fontsize=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny grid (seconds): the CI smoke test")
    parser.add_argument("--full", action="store_true", help="4x the canaries and 2x the rounds")
    parser.add_argument("--epsilons", type=positive_float, nargs="*", help="target epsilons (default 1 2 4 8)")
    known = sorted({*CLIENT_LEVEL, *LOCAL_ONLY, *SAMPLE_LEVEL})
    parser.add_argument("--strategies", nargs="*", choices=known, help="only these strategies")
    parser.add_argument("--kinds", nargs="*", choices=sorted(SCALE), help="only these kinds of audit (SCALE's keys)")
    parser.add_argument("--canary-factor", type=positive_int, help="canaries per kind times this (default 1; --full: 4)")
    parser.add_argument("--no-cross-check", action="store_true", help="skip the many-run cross-check")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--cross-check-runs", type=positive_int, default=2000, help="runs of the many-run audit")
    parser.add_argument("--out", type=output_file, default=RESULTS / "privacy_audit.csv")
    parser.add_argument("--ideal", nargs=2, type=positive_int, action="append", metavar=("ROUNDS", "CANARIES"),
                        help="only the ideal reference of central at q = 0.1 with this many rounds and canaries (repeatable)")
    parser.add_argument("--family", action="store_true",
                        help="with --ideal: also audit against the composed subsampled Gaussian curves (benchmarks.audit_family)")
    parser.add_argument("--coin-draws", type=positive_int, default=3, help="with --ideal: draws of the canaries' coins per size")
    parser.add_argument("--merge", action="store_true", help="keep --out's rows; a configuration audited again replaces its row")
    args = parser.parse_args()
    logging.getLogger("fl_dp").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    started = time.perf_counter()
    if args.ideal:
        sizes = [(rounds, canaries) for rounds, canaries in args.ideal]
        print(markdown_table(ideal_table(sizes, max(args.epsilons or [8.0]), args.coin_draws, args.family)))
        return
    table = run(args, pd.read_csv(args.out) if args.merge and args.out.exists() else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    plot(table, args.out.with_suffix(".png"))
    print(markdown_table(table.drop(columns=["confidence"])))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
