"""The SecAgg+ dropout benchmark: both workflows see the same dropouts; Flower's loses the rounds
in which a client left before sharing its keys, fl-dp's does not."""

from __future__ import annotations

import logging

import pytest

from benchmarks.secagg_dropouts import run


@pytest.fixture(autouse=True)
def _quiet_lost_rounds():
    logging.disable(logging.ERROR)
    yield
    logging.disable(logging.NOTSET)


def test_both_workflows_see_the_same_dropouts_and_fl_dp_keeps_the_early_ones():
    flower, fl_dp = (run(name, num_clients=8, rounds=4, p=0.25, seed=3) for name in ("flower", "fl-dp"))
    assert flower["clients_left"] == fl_dp["clients_left"] > 0
    # seed 3 draws a client leaving before it shared its keys in at least one round (deterministic)
    assert fl_dp["rounds_completed"] > flower["rounds_completed"]
    assert fl_dp["shares_summed"] > flower["shares_summed"]
