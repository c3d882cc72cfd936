"""The DP-SGD / random-sparsification benchmark: its paper-regime grid and how it resumes."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks.dp_sgd_rs import full_jobs, split_finished, summary
from fl_dp.registry import build_algorithm


def test_full_grid_is_the_papers_fashion_mnist_regime_for_both_methods():
    grid = list(full_jobs())
    assert len(grid) == 3 * 2 * 2 * 3  # eps x clients x (DP-SGD, RS) x seeds
    assert {(run["clients"], run["epsilon"], run["r*"]) for _, run in grid} == {
        (c, e, r) for c in (1, 10) for e in (1.0, 2.0, 4.0) for r in (0.0, 0.9)
    }
    for cfg, run in grid:
        assert (cfg.dataset, cfg.model, cfg.max_train_samples, cfg.eval_samples) == ("fashion-mnist", "dp-cnn", 0, 0)
        assert (cfg.client_lr, cfg.momentum, cfg.clip, cfg.target_epsilon) == (4.0, 0.9, 0.1, run["epsilon"])
        assert cfg.clients_per_round == cfg.num_clients == run["clients"]
        assert cfg.num_server_rounds * cfg.local_epochs == 40  # epochs over the data, either way
        assert abs(cfg.batch_size * cfg.num_clients - 2048) <= 5  # the federation's batch is the paper's
        algorithm = build_algorithm(cfg, 26_010)
        assert algorithm.final_rate == run["r*"]  # dp-sgd has no mask at all
    one_client = [cfg for cfg, run in grid if run["clients"] == 1]
    assert all(cfg.num_server_rounds == 1 for cfg in one_client)  # momentum runs through all 40 epochs


def test_resume_keeps_finished_runs_and_redoes_unfinished_ones():
    grid = list(full_jobs(epsilons=(1.0,), seeds=1))
    one = [job for job in grid if job[1]["clients"] == 1]
    ten = [job for job in grid if job[1]["clients"] == 10]

    def rows(job, rounds):
        cfg, run = job
        return [dict(run, seed=cfg.seed, round=r, **{"test-accuracy": 0.5, "bytes-up": 8.0}) for r in range(1, rounds + 1)]

    # a finished one-client run (its one round), a 10-client run stopped at round 12 of 40
    histories = pd.DataFrame(rows(one[0], 1) + rows(ten[0], 12) + rows(ten[1], 40))
    kept, todo = split_finished(grid, histories)
    assert todo == [one[1], ten[0]]
    assert len(kept) == 1 + 40 and set(kept["clients"]) == {1, 10}
    table = summary(kept)
    assert table[["clients", "r*", "seeds"]].values.tolist() == [[1, 0.0, 1], [10, 0.9, 1]]
    assert table["paper (DP-CNN/S, tuned)"].tolist() == pytest.approx([0.832, math.nan], nan_ok=True)  # one model, all data
