"""Run grids of in-process federations (in parallel processes) and write tables and plots."""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from fl_dp.config import RunConfig
from fl_dp.inprocess import run_inprocess

RESULTS = Path(__file__).parents[1] / "results" / "benchmarks"


def _run_one(job: tuple[RunConfig, dict[str, Any]]) -> pd.DataFrame:
    import torch

    torch.set_num_threads(1)  # one process per core
    cfg, labels = job
    started = time.perf_counter()
    history = run_inprocess(cfg)
    for key, value in labels.items():
        history[key] = value
    history["seed"] = cfg.seed
    history["run-seconds"] = time.perf_counter() - started
    return history


def run_grid(
    jobs: list[tuple[RunConfig, dict[str, Any]]],
    workers: int,
    progress: bool = True,
    partial_csv: Path | None = None,
    prior: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every (config, labels) job's per-round history, labelled, in one DataFrame.

    With ``partial_csv``, the histories finished so far (after ``prior``, histories of an
    earlier grid kept beside them) are rewritten there after each run, so that a long grid
    stopped early keeps what it measured.
    """
    histories = [] if prior is None else [prior]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done, history in enumerate(pool.map(_run_one, jobs), start=1):
            histories.append(history)
            if partial_csv is not None:
                partial_csv.parent.mkdir(parents=True, exist_ok=True)
                pd.concat(histories, ignore_index=True).to_csv(partial_csv, index=False)
            if progress:
                last = history.iloc[-1]
                print(
                    f"[{done}/{len(jobs)}] {last['strategy']} {', '.join(f'{k}={history[k].iloc[0]}' for k in jobs[done - 1][1])}"
                    f" seed={last['seed']}: test-accuracy={last['test-accuracy']:.3f} eps={last['epsilon-max']:.3g}"
                    f" ({last['run-seconds']:.0f} s)",
                    flush=True,
                )
    return pd.concat(histories, ignore_index=True)


def summarise(histories: pd.DataFrame, by: list[str], metric: str = "test-accuracy", last_k: int = 1) -> pd.DataFrame:
    """Mean and std over seeds of ``metric`` averaged over each run's last ``last_k`` rounds."""
    final = (
        histories.sort_values("round")
        .groupby(by + ["seed"], dropna=False)
        .apply(lambda run: run[metric].tail(last_k).mean(), include_groups=False)
        .rename(metric)
        .reset_index()
    )
    table = final.groupby(by, dropna=False)[metric].agg(["mean", "std", "count"]).reset_index()
    return table.rename(columns={"mean": f"{metric}-mean", "std": f"{metric}-std", "count": "seeds"})


def write_outputs(name: str, histories: pd.DataFrame, table: pd.DataFrame, plot: Callable[[Path], None] | None) -> Path:
    out = RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    histories.to_csv(out / "histories.csv", index=False)
    table.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown_table(table))
    if plot is not None:
        plot(out)
    return out


def accuracy_errorbar(ax, x, rows: pd.DataFrame, label: str) -> None:
    """Mean test accuracy over seeds with its std (0 where one seed) as error bars."""
    ax.errorbar(x, rows["test-accuracy-mean"], yerr=rows["test-accuracy-std"].fillna(0), marker="o", capsize=3, label=label)


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """(figure, axes) like ``pyplot.subplots``, on a bare Figure: no pyplot state, no backend switch
    (a notebook that imports a benchmark keeps its own backend)."""
    from matplotlib.figure import Figure

    squeeze = kwargs.pop("squeeze", True)
    fig = Figure(**kwargs)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(fig, legend_ax, path: Path, legend_fontsize: int = 8) -> None:
    """The benchmarks' figure convention: one legend on ``legend_ax``, tight layout, 120 dpi PNG."""
    legend_ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table (floats to 4 significant digits), without the tabulate dependency."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _number(parse: Callable[[str], Any], lowest: float, inclusive: bool, what: str) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the value and refuse one below ``lowest`` (argparse then names the
    option and exits with its usage, instead of a traceback or a silently empty grid)."""

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value < lowest or (value == lowest and not inclusive):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return check


positive_int = _number(int, 1, True, "a whole number >= 1")
non_negative_int = _number(int, 0, True, "a whole number >= 0")
positive_float = _number(float, 0.0, False, "a number > 0")


def output_file(text: str) -> Path:
    """An argparse type: a file the benchmark can write, its folder made now (a folder that cannot be
    made, or a path that is a folder, would fail only once the first runs are done)."""
    path = Path(text)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: its folder cannot be made ({err.strerror or err})") from None
    if path.is_dir() or not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a file this benchmark can write")
    return path


def input_table(*columns: str) -> Callable[[str], Path]:
    """An argparse type: a CSV that can be read and has ``columns``, checked before any run (it was
    read only after the grid was built, or its runs done, and failed with a traceback)."""

    def check(text: str) -> Path:
        path = Path(text)
        try:
            header = pd.read_csv(path, nrows=0).columns
        except (OSError, ValueError) as err:  # pandas' parser errors are ValueErrors
            raise argparse.ArgumentTypeError(f"{text!r} cannot be read as a CSV ({type(err).__name__}: {err})") from None
        missing = [column for column in columns if column not in header]
        if missing:
            raise argparse.ArgumentTypeError(f"{text!r} lacks the column(s) {', '.join(missing)}")
        return path

    return check


def checked_option(parser: argparse.ArgumentParser, check: Callable[[str], Any], value: Any, option: str) -> Any:
    """``check(value)`` for an option whose check depends on other options (argparse's error if it fails)."""
    try:
        return check(str(value))
    except argparse.ArgumentTypeError as err:
        parser.error(f"argument {option}: {err}")


def fraction(text: str) -> float:
    """An argparse type: a number in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not in (0, 1]")
    return value


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=positive_int, default=2, help="seeds per setting")
    parser.add_argument("--rounds", type=positive_int, default=None, help="override the number of rounds")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--quick", action="store_true", help="a tiny grid that runs in a minute (smoke test)")
    return parser
