"""The privacy-utility benchmark's bookkeeping: its grid, and the choice of setting per cell."""

import math

import pandas as pd

from benchmarks.privacy_utility import (
    COLUMNS,
    TUNING,
    best_per_cell,
    best_settings,
    jobs,
    merged,
    parse_setting,
    setting_label,
)


def test_every_method_gets_the_same_number_of_settings():
    assert len({len(values) for values in TUNING.values()}) == 1


def test_the_grid_covers_each_cell_once_per_setting_and_seed():
    scale = dict(clients=1000, per_round=100, rounds=300)
    cells = [("alpha-normec", "central", 8.0), ("dp-fedavg", "local", math.inf)]
    grid = jobs(cells, seeds=2, scale=scale)
    assert len(grid) == 2 * len(TUNING["alpha-normec"]) * 2
    cfg, labels = grid[0]
    assert (cfg.num_clients, cfg.clients_per_round, cfg.num_server_rounds, cfg.delta) == (1000, 100, 300, 1e-5)
    assert cfg.privacy_model == "central" and cfg.target_epsilon == 8.0
    assert parse_setting(labels["setting"]) == TUNING["alpha-normec"][0]
    assert (cfg.beta, cfg.server_lr) == (TUNING["alpha-normec"][0]["beta"], TUNING["alpha-normec"][0]["server_lr"])
    assert grid[-1][0].target_epsilon == 0.0  # eps = inf: the same run without noise


def test_a_confirmation_grid_runs_fresh_seeds_on_the_test_set_it_is_given():
    scale = dict(clients=1000, per_round=100, rounds=100)
    chosen = {("alpha-normec", "central", 8.0): [{"beta": 0.3, "server_lr": 1.0}]}
    grid = jobs([("alpha-normec", "central", 8.0)], seeds=3, scale=scale, settings=chosen, first_seed=1, eval_samples=0)
    assert [cfg.seed for cfg, _ in grid] == [1, 2, 3]
    assert {cfg.eval_samples for cfg, _ in grid} == {0}
    assert {(cfg.beta, cfg.server_lr) for cfg, _ in grid} == {(0.3, 1.0)}
    assert {cfg.eval_samples for cfg, _ in jobs([("clip21", "central", 8.0)], seeds=1, scale=scale)} == {2000}


def test_the_server_normalized_variant_is_alpha_normec_with_a_normalized_step():
    scale = dict(clients=1000, per_round=100, rounds=100)
    cfg, labels = jobs([("normec-server-normalized", "central", 8.0)], seeds=1, scale=scale)[0]
    assert cfg.strategy == "alpha-normec" and cfg.server_normalize and labels["strategy"] == "normec-server-normalized"
    assert not jobs([("alpha-normec", "central", 8.0)], seeds=1, scale=scale)[0][0].server_normalize


def test_the_better_setting_is_kept_per_cell_from_the_seed_mean(tmp_path):
    rows = []
    for setting, accuracies in (("beta=1 server-lr=0.5", (0.80, 0.82)), ("beta=0.3 server-lr=1", (0.90, 0.60))):
        for seed, accuracy in enumerate(accuracies):
            values = ("alpha-normec", "central", 1000, 100, 8.0, 1e-5, 0.6, 100, accuracy, seed, setting, 0.5, 1.0, 100.0)
            rows.append(dict(zip(COLUMNS, values)))
    best = best_per_cell(pd.DataFrame(rows))
    assert len(best) == 1
    assert best["setting"].iloc[0] == "beta=1 server-lr=0.5" and best["test_accuracy"].iloc[0] == 0.81 and best["seeds"].iloc[0] == 2
    assert abs(best["test_accuracy_std"].iloc[0] - 0.0141421) < 1e-6  # the spread over the seeds, beside the mean
    best.to_csv(tmp_path / "best.csv", index=False)
    assert best_settings(tmp_path / "best.csv") == {("alpha-normec", "central", 8.0): [{"beta": 1.0, "server_lr": 0.5}]}
    assert parse_setting(setting_label({"clip": 0.3, "server_lr": 3.0})) == {"clip": 0.3, "server_lr": 3.0}


def test_a_resumed_grid_runs_only_what_did_not_reach_its_last_round():
    from benchmarks.privacy_utility import finished_runs

    scale = dict(clients=1000, per_round=100, rounds=3)
    grid = jobs([("clip21", "central", 8.0)], seeds=1, scale=scale)
    for _, labels in grid:
        labels["rounds"] = 3
    first, second = grid[0][1]["setting"], grid[1][1]["setting"]

    def history(setting, rounds):
        return pd.DataFrame({
            "round": list(rounds), "strategy": "clip21", "privacy-model": "central", "epsilon": 8.0,
            "setting": setting, "rounds": 3, "seed": 0,
        })

    # the first run finished (and was written twice), the second stopped after round 2
    done = pd.concat([history(first, (1, 2, 3)), history(first, (1, 2, 3)), history(second, (1, 2))])
    kept, todo = finished_runs(done, grid)
    assert [labels["setting"] for _, labels in todo] == [labels["setting"] for _, labels in grid[1:]]
    assert set(kept["setting"]) == {first} and len(kept) == 3


def test_the_network_is_part_of_a_runs_identity():
    scale = dict(clients=1000, per_round=100, rounds=100)
    chosen = {("alpha-normec", "central", 8.0): [{"beta": 0.3, "server_lr": 1.0}]}
    relu = jobs([("alpha-normec", "central", 8.0)], seeds=1, scale=scale, settings=chosen)
    tanh = jobs([("alpha-normec", "central", 8.0)], seeds=1, scale=scale, settings=chosen, model="cnn-tanh")
    assert relu[0][0].model == "cnn" and tanh[0][0].model == "cnn-tanh" and tanh[0][1]["model"] == "cnn-tanh"
    assert relu[0][0].replace(model="cnn-tanh") == tanh[0][0]  # nothing else differs

    def row(accuracy, model=None):
        values = ("alpha-normec", "central", 1000, 100, 8.0, 1e-5, 0.99, 100, accuracy, 1, "beta=0.3 server-lr=1", 1.0, 1.0, 1.0)
        return {**dict(zip(COLUMNS, values)), **({"model": model} if model else {})}

    # a table written before the model column existed holds cnn runs; a tanh run sits beside them, a cnn rerun replaces one
    earlier = pd.DataFrame([row(0.80)]).drop(columns="model", errors="ignore")
    both = merged(earlier, pd.DataFrame([row(0.84, "cnn-tanh")]))
    assert sorted(zip(both["model"], both["test_accuracy"])) == [("cnn", 0.80), ("cnn-tanh", 0.84)]
    again = merged(both, pd.DataFrame([row(0.81, "cnn")]))
    assert sorted(zip(again["model"], again["test_accuracy"])) == [("cnn", 0.81), ("cnn-tanh", 0.84)]
