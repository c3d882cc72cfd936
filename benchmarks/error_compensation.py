"""Does error compensation help under central and distributed DP? alpha-NormEC against DP-NSGD and Clip21 (seed 000).

alpha-NormEC and DP normalized SGD (DP-NSGD) send the same message, Norm_alpha of a vector of norm
at most 1, and differ only in error compensation: alpha-NormEC normalizes ``grad - g_i`` and keeps
``g_i`` (and the server its ``G``), DP-NSGD normalizes the gradient itself. Clip21 is the
error-compensated method with clipping in place of smoothed normalization.

The privacy-utility benchmark's task (Fashion-MNIST CNN, 1,000 clients, Poisson cohorts at q = 0.1,
100 rounds, user-level central DP, delta = 1e-5) at eps in {8, 2}, over alpha in {0.01, 0.1, 1}:
alpha-NormEC and DP-NSGD each run their four settings of :data:`benchmarks.privacy_utility.TUNING`
at every alpha (twelve each, the same budget); Clip21, which has no alpha, its four.

Two phases:

- ``grid``: every setting on seed 0, 2,000 test images; the table gives, per (eps, alpha), each
  method's better setting and the gain of error compensation (alpha-NormEC minus DP-NSGD);
- ``confirm``: each method's best setting per eps (over all its alphas) on seeds 1, 2, 3 and the
  whole test set; the gain is then paired by seed. ``--privacy-model distributed`` runs the same
  settings (chosen under central DP, not tuned again) with Skellam noise shares under secure
  aggregation.

Runs already measured with the same configuration (``--reuse``: the privacy-utility CSVs, whose
alpha is the strategies' default 0.1) are read, not run again.

    python -m benchmarks.error_compensation --full --reuse docs/results/privacy_utility.csv --workers 2
    python -m benchmarks.error_compensation --full --phase confirm --reuse docs/results/privacy_utility_confirm.csv --workers 2
    python -m benchmarks.error_compensation --full --phase confirm --privacy-model distributed --workers 2
    python -m benchmarks.error_compensation --quick          # 100 clients, 5 rounds, eps 8, one setting per alpha

Writes ``results/error_compensation.csv`` (``--phase confirm``: ``results/error_compensation_confirm.csv``,
or ``..._confirm_distributed.csv``; the privacy-utility benchmark's columns plus ``alpha``) and prints
the tables.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import base_parser, checked_option, input_table, markdown_table, output_file, positive_float, run_grid
from benchmarks.privacy_utility import (
    COLUMNS,
    RUN_KEY,
    STRATEGIES,
    TUNING,
    best_per_cell,
    finished_runs,
    jobs,
    parse_setting,
    rows_of,
    run_key,
    setting_label,
    with_model,
)
from fl_dp.config import RunConfig

RESULTS = Path(__file__).parents[1] / "results"
ALPHAS = (0.01, 0.1, 1.0)
EPSILONS = (8.0, 2.0)
WITH_EC, WITHOUT_EC, CLIPPED = "alpha-normec", "dp-normalized-sgd", "clip21"
METHODS = (WITH_EC, WITHOUT_EC, CLIPPED)
CONFIRM_SEEDS = (1, 2, 3)
Job = tuple[RunConfig, dict[str, Any]]


def takes_alpha(strategy: str) -> bool:
    return "alpha" in STRATEGIES[strategy]


def grid_settings(strategy: str, alphas: tuple[float, ...], per_alpha: int | None = None) -> list[dict[str, float]]:
    """The settings a method runs: its four of TUNING (the first ``per_alpha`` of them where given), at
    every alpha where the method has one."""
    tuning = TUNING[strategy][:per_alpha]
    if not takes_alpha(strategy):
        return list(tuning)
    return [{"alpha": alpha, **setting} for alpha in alphas for setting in tuning]


#: what a table of runs must hold to be reused or confirmed (tables older than the model column are of the CNN)
RUN_COLUMNS = [column for column in COLUMNS if column != "model"]


def with_alpha(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of the privacy-utility benchmark relabelled as this one's: its alpha-taking methods ran at
    their default alpha, which joins the setting label; other runs get alpha NaN."""
    runs = with_model(runs).copy()
    alphas, settings = [], []
    for strategy, setting in zip(runs["strategy"], runs["setting"]):
        values = parse_setting(setting)
        if strategy in STRATEGIES and takes_alpha(strategy) and "alpha" not in values:
            values = {"alpha": STRATEGIES[strategy]["alpha"], **values}
        alphas.append(values.get("alpha", math.nan))
        settings.append(setting_label(values))
    return runs.assign(alpha=alphas, setting=settings)


def reused_and_todo(grid: list[Job], earlier: pd.DataFrame) -> tuple[pd.DataFrame, list[Job]]:
    """Rows of ``earlier`` that are runs of ``grid`` (same strategy, privacy model, eps, setting, rounds,
    seed and network) and the jobs that still have to run."""
    wanted = {run_key(cfg, labels): (cfg, labels) for cfg, labels in grid}
    wanted_rows = pd.Series(
        [tuple(k) in wanted for k in earlier[RUN_KEY].itertuples(index=False)], index=earlier.index, dtype=bool
    )
    reused = earlier[wanted_rows].drop_duplicates(subset=RUN_KEY, keep="last")
    done = {tuple(k) for k in reused[RUN_KEY].itertuples(index=False)}
    return reused.reset_index(drop=True), [job for key, job in wanted.items() if key not in done]


def without_alpha(setting: str) -> str:
    """A setting's label less its alpha (which a table shows in a column of its own)."""
    return setting_label({key: value for key, value in parse_setting(setting).items() if key != "alpha"})


def grid_jobs(
    scale: dict[str, int], epsilons: tuple[float, ...], alphas: tuple[float, ...], per_alpha: int | None = None
) -> list[Job]:
    """Every setting of every method at every eps, seed 0."""
    cells = [(method, "central", eps) for eps in epsilons for method in METHODS]
    settings = {cell: grid_settings(cell[0], alphas, per_alpha) for cell in cells}
    return jobs(cells, seeds=1, scale=scale, settings=settings)


def confirm_jobs(scale: dict[str, int], grid_runs: pd.DataFrame, privacy_model: str = "central") -> list[Job]:
    """Each method's best setting per eps in ``grid_runs`` (the central grid) on the confirmation seeds
    and the whole test set, under ``privacy_model`` (distributed: at central's settings, untuned)."""
    best = best_per_cell(grid_runs)
    settings = {(r.strategy, privacy_model, float(r.epsilon)): [parse_setting(r.setting)] for r in best.itertuples(index=False)}
    return jobs(
        list(settings), seeds=len(CONFIRM_SEEDS), scale=scale, settings=settings, first_seed=CONFIRM_SEEDS[0], eval_samples=0
    )


def alpha_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (eps, alpha): the better setting's accuracy of alpha-NormEC and of DP-NSGD, and the gain of
    error compensation; Clip21 (no alpha) beside every alpha of its eps."""
    clipped = best_per_cell(runs[runs["strategy"] == CLIPPED]).set_index("epsilon")
    rows = []
    for alpha, at_alpha in runs[runs["alpha"].notna()].groupby("alpha"):
        for eps, cell in best_per_cell(at_alpha).groupby("epsilon", sort=False):
            best = cell.set_index("strategy")
            row: dict[str, Any] = {"epsilon": eps, "alpha": alpha}
            for method in (WITH_EC, WITHOUT_EC):
                if method in best.index:
                    row[method] = float(best.loc[method, "test_accuracy"])
                    row[f"{method} setting"] = without_alpha(best.loc[method, "setting"])
            row["gain of error compensation"] = row.get(WITH_EC, math.nan) - row.get(WITHOUT_EC, math.nan)
            if eps in clipped.index:
                row[CLIPPED] = float(clipped.loc[eps, "test_accuracy"])
                row[f"{CLIPPED} setting"] = clipped.loc[eps, "setting"]
            rows.append(row)
    return pd.DataFrame(rows)


def confirmed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per eps and method: mean and spread over the seeds; and the gain of error compensation paired by seed."""

    def spread(eps: float, method: str, setting: str, values: pd.Series) -> dict[str, Any]:
        return {
            "epsilon": eps,
            "method": method,
            "setting": setting,
            "seeds": len(values),
            "mean": values.mean(),
            "std": values.std(),
            "each seed": list(values.round(4)),
        }

    rows = []
    for eps, at_eps in runs.groupby("epsilon", sort=False):
        accuracy = at_eps.pivot_table(index="seed", columns="strategy", values="test_accuracy")
        for method in [m for m in METHODS if m in accuracy.columns]:
            setting = at_eps.loc[at_eps["strategy"] == method, "setting"].iloc[0]
            rows.append(spread(eps, method, setting, accuracy[method].dropna()))
        if {WITH_EC, WITHOUT_EC} <= set(accuracy.columns):
            gain = (accuracy[WITH_EC] - accuracy[WITHOUT_EC]).dropna()
            rows.append(spread(eps, "gain of error compensation (paired)", "", gain))
    return pd.DataFrame(rows)


def run(grid: list[Job], reuse: list[Path], out: Path, workers: int, resume: bool) -> pd.DataFrame:
    """The grid's runs: those of the ``reuse`` CSVs as they are, the others run (``resume``: those whose
    histories beside ``out`` reached their last round are kept)."""
    earlier = pd.DataFrame(columns=COLUMNS)
    if reuse:
        earlier = pd.concat([with_alpha(pd.read_csv(path)) for path in reuse], ignore_index=True)
    reused, to_measure = reused_and_todo(grid, earlier)
    histories_csv = out.with_name(out.stem + "_histories.csv")
    prior, todo = None, to_measure
    if resume and histories_csv.exists():
        prior, todo = finished_runs(pd.read_csv(histories_csv), to_measure)
    print(f"{len(grid)} runs: {len(reused)} reused, {len(to_measure) - len(todo)} resumed, {len(todo)} to run", flush=True)
    histories = run_grid(todo, workers, partial_csv=histories_csv, prior=prior) if todo else prior
    measured = rows_of(histories, to_measure) if to_measure else pd.DataFrame(columns=COLUMNS)
    return with_alpha(pd.concat([reused[COLUMNS], measured], ignore_index=True))


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--phase", choices=["grid", "confirm"], default="grid")
    parser.add_argument(
        "--reuse", type=input_table(*RUN_COLUMNS), nargs="*", default=[], help="CSVs of runs already measured (privacy-utility's columns)"
    )
    parser.add_argument("--epsilons", type=positive_float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--alphas", type=positive_float, nargs="+", default=list(ALPHAS))
    parser.add_argument(
        "--grid-csv",
        type=Path,
        default=RESULTS / "error_compensation.csv",
        help="the grid phase's runs, from which --phase confirm takes each method's best setting",
    )
    parser.add_argument(
        "--privacy-model",
        choices=["central", "distributed"],
        default="central",
        help="--phase confirm: the privacy model of the fresh-seed runs (distributed: at central's chosen settings)",
    )
    parser.add_argument("--out", type=output_file, default=None)
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs that the histories beside --out hold to their last round"
    )
    parser.add_argument(
        "--full", action="store_true", help="the regime reported (1,000 clients), also the default without --quick"
    )
    args = parser.parse_args()
    if args.full and args.quick:
        parser.error("--full and --quick: choose one")
    if args.quick:
        scale = dict(clients=100, per_round=10, rounds=args.rounds or 5)
    else:
        scale = dict(clients=1000, per_round=100, rounds=args.rounds or 100)
    started = time.perf_counter()
    if args.phase == "grid":
        out = args.out or checked_option(parser, output_file, args.grid_csv, "--grid-csv")
        # --quick: one eps, each method's first setting
        grid = grid_jobs(
            scale, tuple(args.epsilons[:1] if args.quick else args.epsilons), tuple(args.alphas), 1 if args.quick else None
        )
    else:
        out = (
            args.out
            or RESULTS / f"error_compensation_confirm{'' if args.privacy_model == 'central' else '_' + args.privacy_model}.csv"
        )
        grid_csv = checked_option(parser, input_table(*RUN_COLUMNS), args.grid_csv, "--grid-csv")
        grid = confirm_jobs(scale, with_alpha(pd.read_csv(grid_csv)), args.privacy_model)
    runs = run(grid, args.reuse, out, args.workers, args.resume)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out, index=False)
    table = alpha_table(runs) if args.phase == "grid" else confirmed_table(runs)
    print(markdown_table(table))
    print(f"{len(grid)} runs in {time.perf_counter() - started:.0f} s; written to {out}")


if __name__ == "__main__":
    main()
