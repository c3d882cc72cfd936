"""The privacy-utility benchmark's bookkeeping: its grid, and the choice of step size per cell."""

import math

import pandas as pd

from benchmarks.privacy_utility import COLUMNS, TUNING, best_per_cell, jobs


def test_every_method_gets_the_same_number_of_step_sizes():
    assert len({len(values) for values in TUNING.values()}) == 1


def test_the_grid_covers_each_cell_once_per_step_size_and_seed():
    scale = dict(clients=1000, per_round=100, rounds=300)
    cells = [("alpha-normec", "central", 8.0), ("dp-fedavg", "local", math.inf)]
    grid = jobs(cells, seeds=2, scale=scale)
    assert len(grid) == 2 * 2 * 2
    cfg, labels = grid[0]
    assert (cfg.num_clients, cfg.clients_per_round, cfg.num_server_rounds, cfg.delta) == (1000, 100, 300, 1e-5)
    assert cfg.privacy_model == "central" and cfg.target_epsilon == 8.0 and labels["server_lr"] in TUNING["alpha-normec"]
    assert grid[-1][0].target_epsilon == 0.0  # eps = inf: the same run without noise


def test_the_better_step_size_is_kept_per_cell_from_the_seed_mean():
    rows = []
    for lr, accuracies in ((0.5, (0.80, 0.82)), (1.0, (0.90, 0.60))):
        for seed, accuracy in enumerate(accuracies):
            rows.append(dict(zip(COLUMNS, ("alpha-normec", "central", 1000, 100, 8.0, 1e-5, 0.6, 100, accuracy, seed, lr, 1.0))))
    best = best_per_cell(pd.DataFrame(rows))
    assert len(best) == 1
    assert best["server_lr"].iloc[0] == 0.5 and best["test_accuracy"].iloc[0] == 0.81 and best["seeds"].iloc[0] == 2
