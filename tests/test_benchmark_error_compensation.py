"""The error-compensation benchmark: its equal-budget grid over alpha, the reuse of measured runs, its tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks.error_compensation import (
    ALPHAS,
    CLIPPED,
    WITH_EC,
    WITHOUT_EC,
    alpha_table,
    confirm_jobs,
    confirmed_table,
    grid_jobs,
    reused_and_todo,
    run,
    with_alpha,
)
from benchmarks.privacy_utility import COLUMNS, TUNING

SCALE = dict(clients=1000, per_round=100, rounds=100)


def _run_row(strategy: str, eps: float, setting: str, accuracy: float, seed: int = 0) -> dict:
    values = (strategy, "central", 1000, 100, eps, 1e-5, 1.0, 100, accuracy, seed, setting, 1.0, 1.0, 100.0, "cnn")
    return dict(zip(COLUMNS, values))


def test_with_and_without_error_compensation_get_the_same_settings_at_every_alpha():
    grid = grid_jobs(SCALE, (8.0, 2.0), ALPHAS)
    count = pd.Series([(labels["strategy"], labels["epsilon"]) for _, labels in grid]).value_counts()
    assert count[(WITH_EC, 8.0)] == count[(WITHOUT_EC, 8.0)] == len(ALPHAS) * len(TUNING[WITH_EC])
    assert count[(CLIPPED, 2.0)] == len(TUNING[CLIPPED])  # no alpha to range over
    for cfg, labels in grid:
        assert cfg.privacy_model == "central" and (cfg.num_clients, cfg.clients_per_round, cfg.num_server_rounds) == (
            1000,
            100,
            100,
        )
        assert cfg.target_epsilon == labels["epsilon"] and cfg.seed == 0
        if labels["strategy"] != CLIPPED:
            assert labels["setting"].startswith(f"alpha={cfg.alpha:g} ")
    alphas = {cfg.alpha for cfg, labels in grid if labels["strategy"] == WITHOUT_EC}
    assert alphas == set(ALPHAS)
    assert len(grid_jobs(SCALE, (8.0,), (0.1, 1.0), per_alpha=1)) == 2 + 2 + 1


def test_a_privacy_utility_run_is_relabelled_with_its_default_alpha_and_reused():
    earlier = with_alpha(
        pd.DataFrame(
            [
                _run_row(WITH_EC, 8.0, "beta=0.3 server-lr=1", 0.8),
                _run_row(CLIPPED, 8.0, "clip=0.3 server-lr=1", 0.8),
                _run_row(WITH_EC, 8.0, "beta=0.3 server-lr=1", 0.8, seed=5),  # another seed: not this grid's
                _run_row("dp-fedavg", 8.0, "clip=0.1 server-lr=3", 0.8),
            ]
        )
    )
    assert list(earlier["setting"][:2]) == ["alpha=0.1 beta=0.3 server-lr=1", "clip=0.3 server-lr=1"]
    assert earlier["alpha"][0] == 0.1 and math.isnan(earlier["alpha"][1]) and math.isnan(earlier["alpha"][3])
    grid = grid_jobs(SCALE, (8.0,), ALPHAS)
    reused, todo = reused_and_todo(grid, earlier)
    assert len(reused) == 2 and set(reused["seed"]) == {0}
    assert len(todo) == len(grid) - 2
    assert all(labels["setting"] != "alpha=0.1 beta=0.3 server-lr=1" or labels["strategy"] != WITH_EC for _, labels in todo)


def test_the_confirmation_runs_each_methods_best_setting_over_all_alphas_on_fresh_seeds():
    runs = with_alpha(
        pd.DataFrame(
            [
                _run_row(WITH_EC, 8.0, "alpha=0.01 beta=0.3 server-lr=1", 0.81),
                _run_row(WITH_EC, 8.0, "alpha=1 beta=0.3 server-lr=1", 0.83),
                _run_row(WITHOUT_EC, 8.0, "alpha=1 server-lr=4", 0.75),
                _run_row(WITHOUT_EC, 8.0, "alpha=0.1 server-lr=1", 0.73),
                _run_row(CLIPPED, 8.0, "clip=0.3 server-lr=1", 0.82),
            ]
        )
    )
    grid = confirm_jobs(SCALE, runs)
    chosen = {(labels["strategy"], labels["setting"]) for _, labels in grid}
    assert chosen == {
        (WITH_EC, "alpha=1 beta=0.3 server-lr=1"),
        (WITHOUT_EC, "alpha=1 server-lr=4"),
        (CLIPPED, "clip=0.3 server-lr=1"),
    }
    assert sorted(cfg.seed for cfg, _ in grid) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert {cfg.eval_samples for cfg, _ in grid} == {0}
    assert {cfg.alpha for cfg, labels in grid if labels["strategy"] == WITHOUT_EC} == {1.0}

    table = alpha_table(runs).set_index("alpha")
    assert table.loc[1.0, "gain of error compensation"] == pytest.approx(0.83 - 0.75)
    assert table.loc[0.1, WITHOUT_EC] == 0.73 and math.isnan(table.loc[0.1, WITH_EC])
    assert table.loc[1.0, f"{WITH_EC} setting"] == "beta=0.3 server-lr=1" and table.loc[0.01, CLIPPED] == 0.82


def test_the_confirmed_gain_is_paired_by_seed():
    rows = [_run_row(WITH_EC, 2.0, "alpha=0.1 beta=0.1 server-lr=2", a, seed) for seed, a in ((1, 0.78), (2, 0.80), (3, 0.79))]
    rows += [_run_row(WITHOUT_EC, 2.0, "alpha=1 server-lr=1", a, seed) for seed, a in ((1, 0.70), (2, 0.74), (3, 0.71))]
    table = confirmed_table(with_alpha(pd.DataFrame(rows))).set_index("method")
    assert table.loc[WITH_EC, "mean"] == pytest.approx(0.79) and table.loc[WITH_EC, "seeds"] == 3
    gain = table.loc["gain of error compensation (paired)"]
    assert gain["each seed"] == [0.08, 0.06, 0.08] and gain["mean"] == pytest.approx(0.22 / 3)


def test_a_small_grid_runs_and_its_table_has_a_gain_at_every_alpha(tmp_path):
    scale = dict(clients=20, per_round=5, rounds=2)
    grid = grid_jobs(scale, (8.0,), (0.1, 1.0), per_alpha=1)
    runs = run(grid, [], tmp_path / "ec.csv", workers=1, resume=False)
    assert len(runs) == 5 and runs["test_accuracy"].between(0, 1).all()
    assert set(runs["strategy"]) == {WITH_EC, WITHOUT_EC, CLIPPED}
    table = alpha_table(runs)
    assert list(table["alpha"]) == [0.1, 1.0] and table["gain of error compensation"].notna().all()
    # a second call reuses what the first measured and runs nothing
    runs.to_csv(tmp_path / "ec.csv", index=False)
    again = run(
        grid_jobs(scale, (8.0,), (0.1, 1.0), per_alpha=1), [tmp_path / "ec.csv"], tmp_path / "again.csv", workers=1, resume=False
    )
    pd.testing.assert_frame_equal(
        again.sort_values("setting").reset_index(drop=True), runs.sort_values("setting").reset_index(drop=True), check_dtype=False
    )


def test_the_distributed_confirmation_runs_centrals_choice_with_noise_shares():
    runs = with_alpha(
        pd.DataFrame(
            [_run_row(WITH_EC, 8.0, "alpha=0.01 beta=0.3 server-lr=1", 0.81), _run_row(CLIPPED, 8.0, "clip=0.3 server-lr=1", 0.8)]
        )
    )
    grid = confirm_jobs(SCALE, runs, privacy_model="distributed")
    assert {cfg.privacy_model for cfg, _ in grid} == {"distributed"} and len(grid) == 2 * 3
    assert {(cfg.alpha, cfg.beta, cfg.server_lr) for cfg, labels in grid if labels["strategy"] == WITH_EC} == {(0.01, 0.3, 1.0)}
