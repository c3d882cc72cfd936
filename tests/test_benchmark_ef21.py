"""The EF21 benchmark's bookkeeping: the paper's horizon search for ||EF21|| and the head-to-head table."""

import math

import pandas as pd

from benchmarks import ef21


def _history(grad_norms, bits_per_round=10.0):
    rounds = range(len(grad_norms))
    return pd.DataFrame({
        "round": list(rounds), "grad-norm": grad_norms, "bits-up-cumulative": [bits_per_round * r for r in rounds], "gamma": 0.5,
    })


def test_first_hits_are_the_first_round_at_or_below_each_target():
    hits = ef21.first_hits(_history([1.0, 0.02, 0.01, 0.005, 0.0009]))
    assert hits == {1e-2: (2, 20.0), 1e-3: (4, 40.0)}
    assert ef21.first_hits(_history([1.0, 0.5])) == {}


def test_the_norm_search_takes_the_smallest_horizon_that_reaches_each_target(monkeypatch):
    ran = []

    def fake_history(job, horizon):
        ran.append(horizon)
        # a longer horizon means a smaller step: 1e-2 is reached from T = 100 on, 1e-3 from T = 200 on
        norms = [1.0] * horizon
        if horizon >= 100:
            norms[horizon // 2] = 0.009
        if horizon >= 200:
            norms[-1] = 0.0009
        return _history(norms)

    monkeypatch.setattr(ef21, "_history", fake_history)
    job = {"dataset": "synthetic", "n": 1, "k": 1, "method": "‖EF21‖", "setting": "gamma0=1", "seed": 0, "gamma0": 1.0,
           "horizons": (50, 100, 200, 400), "rounds": 400}
    _, rows = ef21._run(job)
    assert ran == [50, 100, 200]  # stops once every target is reached
    by_target = {row["target"]: row for row in rows}
    assert (by_target[1e-2]["rounds"], by_target[1e-2]["horizon"]) == (50, 100)
    assert (by_target[1e-3]["rounds"], by_target[1e-3]["horizon"]) == (199, 200)


def test_head_to_head_keeps_a_setting_only_if_every_seed_reached_the_target():
    rows = []
    for seed in (0, 1):
        rows.append(dict(dataset="d", n=1, k=1, method="EF21", setting="1x theory", seed=seed, gamma=0.1, target=1e-2,
                         rounds=400.0, Mbit=1.0, horizon=2000))
        rows.append(dict(dataset="d", n=1, k=1, method="EF21", setting="4x theory", seed=seed, gamma=0.4, target=1e-2,
                         rounds=100.0 if seed == 0 else math.nan, Mbit=0.3, horizon=2000))
        rows.append(dict(dataset="d", n=1, k=1, method="‖EF21‖", setting="gamma0=1", seed=seed, gamma=1.0, target=1e-2,
                         rounds=200.0, Mbit=0.5, horizon=300))
    versus = ef21.head_to_head(ef21.rounds_to_target(pd.DataFrame(rows)))
    row = versus.iloc[0]
    assert row["EF21 setting"] == "1x theory" and row["EF21 rounds"] == 400  # 4x missed on one seed
    assert row["norm setting"] == "gamma0=1" and row["rounds ratio (norm / EF21)"] == 0.5


def test_a_small_grid_runs_both_methods_on_the_real_task_and_fills_the_head_to_head_table():
    jobs = ef21.grid(["breast-cancer"], [5], seeds=1, rounds=100)
    histories, table, versus = ef21.run(jobs, workers=1)
    assert len(jobs) == 2 * (len(ef21.EF21_STEP_MULTIPLIERS) + len(ef21.GAMMA0))  # k in {1, 2}
    assert set(table["method"]) == {"EF21", "‖EF21‖"} and set(table["target"]) == set(ef21.TARGETS)
    assert len(versus) == 2 * len(ef21.TARGETS) and set(versus["k"]) == {1, 2}
    for _, run in histories.groupby(["method", "setting", "k"]):
        run = run.sort_values("round")
        assert run["grad-norm"].iloc[-1] < run["grad-norm"].iloc[0]  # every candidate makes progress from x_0
        assert run["bits-up-cumulative"].is_monotonic_increasing
    reached = table.dropna(subset=["rounds"])
    assert (reached["rounds"] <= 100).all()
