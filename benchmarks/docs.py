"""Regenerate every generated table of README.md and docs/*.md from the registry and the committed CSVs.

A generated table sits between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``; NAME is
one of :data:`TABLES`. Everything outside the markers is prose and stays as written.

    python -m benchmarks.docs            # rewrite the tables in place
    python -m benchmarks.docs --check    # exit 1 if any is out of date (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from benchmarks.dp_sgd_rs import PAPER
from benchmarks.error_compensation import CLIPPED, WITH_EC, WITHOUT_EC, alpha_table, confirmed_table, with_alpha
from benchmarks.privacy_utility import with_model
from fl_dp.registry import strategies_table

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "docs" / "results"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)


def _eps(value: float) -> str:
    return "inf (no noise)" if math.isinf(value) else f"{value:g}"


def privacy_utility(models: tuple[str, ...]) -> Callable[[], str]:
    """Test accuracy per (privacy model, rounds, epsilon) and strategy, each cell's tuned setting in parentheses."""

    def table() -> str:
        best = pd.read_csv(RESULTS / "privacy_utility_best.csv")
        best = best[best["privacy_model"].isin(models)]
        order = ("alpha-normec", "fed-alpha-normec", "normec-server-normalized", "dp-normalized-sgd", "clip21", "dp-fedavg")
        strategies = [s for s in order if s in set(best["strategy"])]
        head = "| privacy model | rounds | epsilon | " + " | ".join(strategies) + " | noise multiplier |"
        lines = [head, "|---|---|---|" + "---|" * (len(strategies) + 1)]
        for (model, rounds, eps), cell in best.groupby(["privacy_model", "rounds", "epsilon"], sort=False):
            by = cell.set_index("strategy")
            top = by["test_accuracy"].max()
            values = []
            for s in strategies:
                if s not in by.index:
                    values.append("-")
                    continue
                accuracy = f"{by.loc[s, 'test_accuracy']:.3f}"
                shown = f"**{accuracy}**" if by.loc[s, "test_accuracy"] == top else accuracy
                values.append(f"{shown} ({by.loc[s, 'setting']})")
            sigma = by["noise_multiplier"].iloc[0]
            lines.append(f"| {model} | {rounds} | {_eps(eps)} | " + " | ".join(values) + f" | {sigma:.3g} |")
        return "\n".join(lines)

    return table


def privacy_utility_runs() -> str:
    """Every run of the grid: one row per (strategy, setting), one column per (model, rounds, eps)."""
    runs = pd.read_csv(RESULTS / "privacy_utility.csv")
    runs["cell"] = [f"{m} {r} rounds, eps {_eps(e)}" for m, r, e in zip(runs["privacy_model"], runs["rounds"], runs["epsilon"])]
    cells = list(dict.fromkeys(runs.sort_values(["privacy_model", "rounds", "epsilon"])["cell"]))
    table = runs.pivot_table(index=["strategy", "setting"], columns="cell", values="test_accuracy", aggfunc="mean", sort=False)
    lines = ["| strategy | setting | " + " | ".join(cells) + " |", "|---|---|" + "---|" * len(cells)]
    for (strategy, setting), row in table.iterrows():
        values = ["" if pd.isna(row.get(c)) else f"{row[c]:.3f}" for c in cells]
        lines.append(f"| {strategy} | {setting} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def privacy_utility_confirmed() -> str:
    """Each cell's chosen setting again on fresh seeds and the whole test set: mean, spread and every seed."""
    runs = with_model(pd.read_csv(RESULTS / "privacy_utility_confirm.csv"))
    lines = [
        "| privacy model | rounds | epsilon | strategy | network | setting | seeds | test accuracy (mean ± std) | each seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = ["privacy_model", "rounds", "epsilon", "strategy", "model", "setting"]
    for (model, rounds, eps, strategy, network, setting), cell in runs.sort_values(by + ["seed"]).groupby(by, sort=False):
        accuracy = cell["test_accuracy"]
        each = ", ".join(f"{a:.4f}" for a in accuracy)
        seeds = ", ".join(str(s) for s in cell["seed"])
        lines.append(
            f"| {model} | {rounds} | {_eps(eps)} | {strategy} | {network} | {setting} | {seeds} "
            f"| {accuracy.mean():.4f} ± {accuracy.std():.4f} | {each} |"
        )
    return "\n".join(lines)


def privacy_audit(method: str) -> Callable[[], str]:
    """The audited lower bounds against the ledger's epsilon, one-run or many-run rows."""

    def table() -> str:
        audit = pd.read_csv(RESULTS / "privacy_audit.csv")
        audit = audit[audit["method"].str.startswith(method)]
        lines = [
            "| strategy | privacy model | audit | q | target eps | ledger eps | audited | any mechanism | ideal Gaussian | canaries | runs | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in audit.itertuples(index=False):
            ideal = "" if pd.isna(row.ideal_mechanism_bound) else f"{row.ideal_mechanism_bound:.2f}"
            lines.append(
                f"| {row.strategy} | {row.privacy_model} | {row.kind} | {row.sample_rate:g} "
                f"| {row.target_epsilon:g} | {row.ledger_epsilon:.3f} "
                f"| {row.audited_epsilon_lower_bound:.2f} | {row.approx_dp_epsilon_lower_bound:.2f} | {ideal} "
                f"| {row.canaries} | {row.runs} | {row.seconds:.0f} |"
            )
        return "\n".join(lines)

    return table


def _spread(accuracy: pd.Series) -> str:
    """mean ± std (count) over seeds, or the one value, or '-'."""
    if accuracy.empty:
        return "-"
    if len(accuracy) == 1:
        return f"{accuracy.iloc[0]:.4f} (1)"
    return f"{accuracy.mean():.4f} ± {accuracy.std():.4f} ({len(accuracy)})"


def dp_sgd_rs_full() -> str:
    """The random-sparsification paper's Fashion-MNIST regime: DP-SGD against RS per (clients, eps),
    mean ± std over seeds, each seed, and the paper's Table 2 (one client, tuned) beside them."""
    runs = pd.read_csv(RESULTS / "dp_sgd_rs_full.csv")
    lines = [
        "| clients | epsilon | DP-SGD | RS (r* = 0.9) | RS - DP-SGD | RS - DP-SGD, each seed | DP-SGD, each seed "
        "| RS, each seed | paper: DP-SGD / RS | ledger eps | minutes a run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (clients, eps), cell in runs.sort_values("seed").groupby(["clients", "epsilon"]):
        plain, sparse = cell[cell["r*"] == 0]["test_accuracy"], cell[cell["r*"] > 0]["test_accuracy"]
        gain = f"{sparse.mean() - plain.mean():+.4f}" if len(plain) and len(sparse) else "-"
        # a seed draws the same initial model, batches and noise for both methods: paired differences
        by_seed = cell.pivot_table(index="seed", columns="r*", values="test_accuracy").dropna()
        paired = ", ".join(f"{d:+.4f}" for d in by_seed.iloc[:, -1] - by_seed.iloc[:, 0]) if by_seed.shape[1] == 2 else "-"
        paper_text = f"{PAPER[eps][0] / 100:.3f} / {PAPER[eps][1] / 100:.3f}" if clients == 1 and eps in PAPER else "-"
        lines.append(
            f"| {clients} | {eps:g} | {_spread(plain)} | {_spread(sparse)} | {gain} | {paired} "
            f"| {', '.join(f'{a:.4f}' for a in plain)} | {', '.join(f'{a:.4f}' for a in sparse)} | {paper_text} "
            f"| {cell['ledger_epsilon'].max():.3f} | {cell['run_seconds'].mean() / 60:.1f} |"
        )
    return "\n".join(lines)


def error_compensation() -> str:
    """Per (eps, alpha): the better setting of alpha-NormEC and of DP-NSGD on seed 0, the gain of error
    compensation, and Clip21 (no alpha) beside them."""
    table = alpha_table(with_alpha(pd.read_csv(RESULTS / "error_compensation.csv")))
    lines = [
        "| epsilon | alpha | alpha-NormEC (error compensation) | DP-NSGD (none) | gain of error compensation | Clip21 |",
        "|---|---|---|---|---|---|",
    ]

    def shown(row: pd.Series, method: str) -> str:
        return "-" if pd.isna(row.get(method)) else f"{row[method]:.4f} ({row[f'{method} setting']})"

    for row in table.sort_values(["epsilon", "alpha"], ascending=[False, True]).to_dict("records"):
        gain = row["gain of error compensation"]
        lines.append(
            f"| {_eps(row['epsilon'])} | {row['alpha']:g} | {shown(row, WITH_EC)} | {shown(row, WITHOUT_EC)} "
            f"| {'-' if pd.isna(gain) else f'{gain:+.4f}'} | {shown(row, CLIPPED)} |"
        )
    return "\n".join(lines)


def error_compensation_confirmed(csv: str) -> Callable[[], str]:
    """Each method's best setting on fresh seeds and the whole test set, and the gain paired by seed."""

    def table() -> str:
        confirmed = confirmed_table(with_alpha(pd.read_csv(RESULTS / csv)))
        lines = ["| epsilon | method | setting | seeds | test accuracy (mean ± std) | each seed |", "|---|---|---|---|---|---|"]
        for row in confirmed.sort_values("epsilon", ascending=False, kind="stable").to_dict("records"):
            sign = "+" if row["method"].startswith("gain") else ""
            each = ", ".join(f"{value:{sign}.4f}" for value in row["each seed"])
            mean = f"{row['mean']:{sign}.4f} ± {row['std']:.4f}"
            lines.append(f"| {_eps(row['epsilon'])} | {row['method']} | {row['setting']} | {row['seeds']} | {mean} | {each} |")
        return "\n".join(lines)

    return table


def robust_aggregation() -> str:
    runs = pd.read_csv(RESULTS / "robust_aggregation.csv")
    table = runs.pivot_table(index=["strategy", "attack"], columns="aggregator", values="test-accuracy-mean", sort=False)
    columns = [c for c in ("mean", "trimmed-mean", "median") if c in table.columns]
    lines = ["| strategy | attack | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for (strategy, attack), row in table.iterrows():
        lines.append(f"| {strategy} | {attack} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "strategies": strategies_table,
    "privacy-utility": privacy_utility(("central", "distributed", "local")),
    "privacy-utility-central": privacy_utility(("central",)),
    "privacy-utility-runs": privacy_utility_runs,
    "privacy-utility-confirmed": privacy_utility_confirmed,
    "privacy-audit": privacy_audit("one-run"),
    "privacy-audit-many-run": privacy_audit("many-run"),
    "robust-aggregation": robust_aggregation,
    "dp-sgd-rs-full": dp_sgd_rs_full,
    "error-compensation": error_compensation,
    "error-compensation-confirmed": error_compensation_confirmed("error_compensation_confirm.csv"),
    "error-compensation-distributed": error_compensation_confirmed("error_compensation_confirm_distributed.csv"),
}


def regenerate(text: str) -> str:
    """``text`` with every generated block rebuilt; an unknown block name is an error."""

    def rebuild(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + "\n" + match.group(4)

    return BLOCK.sub(rebuild, text)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report pages whose tables are out of date")
    args = parser.parse_args()
    stale = []
    for page in pages():
        text = page.read_text()
        fresh = regenerate(text)
        if fresh != text:
            stale.append(page)
            if not args.check:
                page.write_text(fresh)
    for page in stale:
        print(f"{'out of date' if args.check else 'regenerated'}: {page.relative_to(ROOT)}")
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
