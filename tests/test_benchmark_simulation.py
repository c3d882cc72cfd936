"""The simulation benchmark's ratio arithmetic and memory measure (its timings are never asserted on)."""

import os

import numpy as np
import pandas as pd
import pytest

from benchmarks.simulation import memory_mib, paired_ratios, ratio_summary


def _triple(clients: int, repeat: int, plain_before: float, flower: float, plain_after: float) -> list[dict]:
    return [
        {
            "clients": clients,
            "repeat": repeat,
            "path": path,
            "total s": 10 * s,
            "s/round after start-up": s,
            "peak RAM MiB": 1000 * s,
            "peak PSS MiB": 500 * s,
        }
        for path, s in (("plain loop", plain_before), ("flwr run + Ray", flower), ("plain loop", plain_after))
    ]


def test_each_flower_run_is_compared_with_the_mean_of_its_own_two_plain_loops():
    table = pd.DataFrame(_triple(100, 1, 1.0, 3.0, 3.0) + _triple(100, 2, 2.0, 2.8, 2.0))
    ratios = paired_ratios(table).set_index("repeat")
    assert ratios.loc[1, "per-round ratio after start-up"] == pytest.approx(1.5)
    assert ratios.loc[2, "per-round ratio after start-up"] == pytest.approx(1.4)
    assert ratios.loc[1, "Flower overhead per client message ms"] == pytest.approx(10.0)
    assert ratios.loc[2, "peak RAM ratio"] == ratios.loc[2, "peak PSS ratio"] == pytest.approx(1.4)


def test_pages_two_processes_share_count_twice_in_their_rss_and_once_in_their_pss():
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, written, then shared with a forked child until it exits
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.read(read, 1)
        os._exit(0)
    try:
        own_rss, own_pss = memory_mib([os.getpid()])
        both_rss, both_pss = memory_mib([os.getpid(), child])
    finally:
        os.write(write, b"x")
        os.waitpid(child, 0)
    assert both_rss - both_pss > 48  # the block, counted in each RSS, once in the PSS sum
    assert own_pss < own_rss - 24  # half of the block is the child's share
    assert memory_mib([child]) == (0.0, 0.0)  # gone: counts nothing
    assert block.sum() == len(block)


def test_summary_counts_the_repeats_within_the_goal():
    table = pd.DataFrame(_triple(100, 1, 1.0, 1.6, 1.0) + _triple(100, 2, 1.0, 1.4, 1.0) + _triple(100, 3, 1.0, 1.45, 1.0))
    summary = ratio_summary(paired_ratios(table), goal=1.5).iloc[0]
    assert summary["repeats"] == 3
    assert summary["median per-round ratio"] == pytest.approx(1.45)
    assert (summary["min"], summary["max"]) == (pytest.approx(1.4), pytest.approx(1.6))
    assert summary["repeats within 1.5x"] == 2


def test_a_triple_missing_a_plain_loop_is_refused():
    table = pd.DataFrame(_triple(10, 1, 1.0, 1.2, 1.0)[:2])
    with pytest.raises(ValueError, match="expected plain, flower, plain"):
        paired_ratios(table)


def test_linkstate_sweeps_deliver_every_request_with_both_lookups():
    from benchmarks.simulation import linkstate_sweeps

    table = linkstate_sweeps(node_counts=(5,), sweeps=1)
    assert list(table["lookup"]) == ["flower's own", "fl-dp index"]
    assert (table["delivered"] == 5).all()
    assert table["flower's own / this"].iloc[0] == 1.0


def test_both_flower_variants_of_a_repeat_are_compared_with_the_same_plain_loops():
    from benchmarks.simulation import FLOWER, FLOWER_OWN_POLLS

    rows = _triple(100, 1, 1.0, 1.2, 1.0)
    rows.insert(1, {"clients": 100, "repeat": 1, "path": FLOWER_OWN_POLLS, "total s": 15.0, "s/round after start-up": 1.5})
    ratios = paired_ratios(pd.DataFrame(rows)).set_index("flower path")
    assert ratios.loc[FLOWER, "per-round ratio after start-up"] == pytest.approx(1.2)
    assert ratios.loc[FLOWER_OWN_POLLS, "per-round ratio after start-up"] == pytest.approx(1.5)
    summary = ratio_summary(paired_ratios(pd.DataFrame(rows)))
    assert sorted(summary["flower path"]) == sorted([FLOWER, FLOWER_OWN_POLLS])


def test_device_throughput_measures_the_cpu_and_says_when_a_device_is_missing():
    import torch

    from benchmarks.simulation import device_throughput

    table = device_throughput(4, ["cpu", "cuda"], rounds=2).set_index("device")
    assert table.loc["cpu", "clients/s"] > 0 and table.loc["cpu", "clients/s vs cpu"] == pytest.approx(1.0)
    if not torch.cuda.is_available():
        assert table.loc["cuda", "GPU"] == "none on this machine" and pd.isna(table.loc["cuda", "clients/s"])


def test_both_paths_of_a_pair_compute_on_the_cpu_unless_flower_clients_are_given_gpus(monkeypatch):
    from benchmarks.simulation import settings

    monkeypatch.delenv("FL_DP_CLIENT_GPUS", raising=False)
    assert settings(10)["device"] == "cpu"
    monkeypatch.setenv("FL_DP_CLIENT_GPUS", "0.1")
    assert settings(10)["device"] == "auto"
    assert settings(10, "cuda")["device"] == "cuda"
