"""A run's outputs: the per-round table (from Flower's ``Result`` or the in-process rows), its CSV
and PNG, and the one progress line a round prints."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

#: the columns Flower's MetricRecords cannot hold (text), kept from the server core's rows
TEXT_COLUMNS = ("strategy", "privacy-model", "skipped", "rejections")
#: columns that are counts, written as integers
INTEGER_COLUMNS = (
    "round",
    "sampled",
    "accepted",
    "rejected",
    "bytes-up",
    "bytes-up-dense",
    "bytes-down",
    "evaluated-clients",
    "evaluation-rejected",
)


def progress_line(row: Mapping[str, Any], total_rounds: int, eta_seconds: float | None) -> str:
    """``round 12/100: acc 0.781, loss 0.612, eps 3.21, up 7.4 MB, 1.9 s, ETA 2m48s`` (the
    accuracy and loss of rounds with an evaluation; skipped rounds and rejections said at the end)."""
    parts = []
    if "test-accuracy" in row:
        parts.append(f"acc {row['test-accuracy']:.3f}")
    if "test-loss" in row:
        parts.append(f"loss {row['test-loss']:.3f}")
    eps = row.get("epsilon-max", 0.0)
    if eps:
        parts.append(f"eps {eps:.3g}")
    parts.append(f"up {_megabytes(row.get('bytes-up', 0))}")
    parts.append(f"{row.get('round-seconds', math.nan):.1f} s")
    if eta_seconds is not None:
        parts.append(f"ETA {_duration(eta_seconds)}")
    if row.get("rejected"):
        parts.append(f"{row['rejected']} rejected")
    if row.get("skipped"):
        parts.append(f"skipped: {row['skipped']}")
    return f"round {row['round']}/{total_rounds}: " + ", ".join(parts)


def history_from_result(result: Any, rows: Sequence[Mapping[str, Any]], first_round: int = 1) -> pd.DataFrame:
    """The per-round table of a Flower run from its ``Result``: each round's train MetricRecord and
    server-side evaluation MetricRecord, with the text columns of the server core's ``rows`` (which
    Flower's records cannot hold), after the rows of the rounds before ``first_round`` (a resumed run)."""
    text = {int(row["round"]): {k: row[k] for k in TEXT_COLUMNS if k in row} for row in rows}
    table = [dict(row) for row in rows if int(row["round"]) < first_round]
    for flower_round in sorted(result.train_metrics_clientapp):
        row: dict[str, Any] = dict(result.train_metrics_clientapp[flower_round])
        row.update(result.evaluate_metrics_serverapp.get(flower_round, {}))
        run_round = int(row["round"])
        row.update(text.get(run_round, {}))
        table.append(row)
    # the core's column order; values Flower's records leave out (NaN: a private run's loss) come back as NaN
    columns = list(dict.fromkeys([key for row in rows for key in row] + [key for row in table for key in row]))
    return typed(pd.DataFrame(table, columns=columns))


def typed(history: pd.DataFrame) -> pd.DataFrame:
    """Counts as integers (Flower's records carry every number as a float)."""
    for column in INTEGER_COLUMNS:
        if column in history and history[column].notna().all():
            history[column] = history[column].astype(int)
    return history


def save(history: pd.DataFrame, csv_path: str | Path) -> tuple[Path, Path]:
    """Write the table as CSV and its accuracy / epsilon / bytes plot as a PNG beside it."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    history.to_csv(csv_path, index=False)
    png_path = csv_path.with_suffix(".png")
    plot(history, png_path)
    return csv_path, png_path


FIGSIZE = (12, 3.4)


def plot(history: pd.DataFrame, path: Path) -> None:
    """:func:`figure` saved as a PNG, drawn without pyplot: the process's backend (a notebook's
    inline display, say) is left as it is."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE)
    _draw(fig, history)
    fig.savefig(path, dpi=110)


def figure(history: pd.DataFrame) -> Any:
    """Test accuracy, epsilon and cumulative upload per round, one panel each (a pyplot Figure, shown
    by a notebook)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=FIGSIZE)
    _draw(fig, history)
    return fig


def _draw(fig: Any, history: pd.DataFrame) -> None:
    axes = fig.subplots(1, 3)
    panels = [
        ("test-accuracy", "test accuracy", history.get("test-accuracy")),
        ("epsilon-max", "epsilon (max over clients)", history.get("epsilon-max")),
        ("bytes-up", "MB sent by clients (cumulative)", history["bytes-up"].cumsum() / 1e6 if "bytes-up" in history else None),
    ]
    for ax, (_, label, values) in zip(axes, panels):
        if values is not None:
            shown = pd.Series(values.to_numpy(dtype=float), index=history["round"]).dropna()
            finite = shown[shown.abs() < math.inf]
            if len(shown) and finite.empty:
                ax.text(0.5, 0.5, "not private (epsilon = inf)", ha="center", va="center", transform=ax.transAxes)
            ax.plot(finite.index, finite.to_numpy(), marker="." if len(finite) < 30 else None)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("round")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    title = " ".join(str(history[c].iloc[0]) for c in ("strategy", "privacy-model") if c in history and len(history))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()


def _megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes < 1e8 else f"{num_bytes / 1e9:.2f} GB"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
