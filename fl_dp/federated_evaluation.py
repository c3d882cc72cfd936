"""Federated evaluation (``evaluation = "federated"``): each client tests the global model on its
own held-out examples, and the server combines what the clients report.

For federations without a server test set (SuperNodes that bring their own files). The server
trusts no report: one with other keys, a non-finite value, an accuracy outside [0, 1] or a count
outside [1, 1e9] is rejected, and a client's weight is capped at the median count the cohort
claims, so one client that lies about its size weighs no more than a typical one.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fl_dp.data import Examples
from fl_dp.errors import ConfigError
from fl_dp.seeding import seed_of
from fl_dp.wire import NUM_EXAMPLES, MalformedMessage

TEST_LOSS = "test-loss"
TEST_ACCURACY = "test-accuracy"
#: every key of an evaluation report, and no other
REPORT_KEYS = frozenset({NUM_EXAMPLES, TEST_LOSS, TEST_ACCURACY})
#: row columns the server adds: clients whose report was combined / refused
EVALUATED_CLIENTS = "evaluated-clients"
EVALUATION_REJECTED = "evaluation-rejected"
MAX_REPORTED_EXAMPLES = 10**9
#: the stream of the evaluation cohorts' draws, apart from training's
_EVALUATION_STREAM = 0xE7A1


def split_held_out(data: Examples, fraction: float, seed: int, partition_id: int) -> tuple[Examples, Examples]:
    """(training examples, held-out examples) of one client: a seeded ``fraction`` of its data,
    at least one example, is kept out of training for evaluation."""
    held = check_held_out(len(data), fraction, partition_id)
    order = np.random.default_rng(np.random.SeedSequence([seed, partition_id, _EVALUATION_STREAM])).permutation(len(data))
    return data.subset(np.sort(order[held:])), data.subset(np.sort(order[:held]))


def check_held_out(num_examples: int, fraction: float, partition_id: int) -> int:
    """How many of a client's ``num_examples`` are held out (at least one); a :class:`ConfigError`
    naming ``held-out-fraction`` where none would be left to train on."""
    held = max(1, round(fraction * num_examples))
    if num_examples - held < 1:
        raise ConfigError(
            f"held-out-fraction {fraction}: client {partition_id} has {num_examples} example(s), too few to keep "
            f"{held} for evaluation and train on the rest"
        )
    return held


def evaluation_cohort(
    nodes: Sequence[Any], num_clients: int, seed: int, server_round: int, os_randomness: bool = False
) -> list[Any]:
    """The clients asked to evaluate after ``server_round``: ``num_clients`` of ``nodes`` drawn
    with the run's seed (or from the OS), all of them when ``num_clients`` is 0 or at least their
    number; in the order of ``nodes``, which the draw depends on (as :meth:`ServerCore.sample`'s)."""
    ordered = list(nodes)
    if num_clients == 0 or num_clients >= len(ordered):
        return ordered
    rng = random.SystemRandom() if os_randomness else random.Random(seed_of(seed, _EVALUATION_STREAM, server_round))
    drawn = set(rng.sample(range(len(ordered)), num_clients))
    return [node for index, node in enumerate(ordered) if index in drawn]


def check_report(metrics: Mapping[str, Any]) -> tuple[int, float, float]:
    """(examples, loss, accuracy) of one client's report, or :class:`MalformedMessage` with the reason."""
    if not isinstance(metrics, Mapping) or set(metrics) != REPORT_KEYS:
        got = sorted(map(str, metrics))[:8] if isinstance(metrics, Mapping) else type(metrics).__name__
        raise MalformedMessage(f"an evaluation report holds exactly {sorted(REPORT_KEYS)}, got {got}")
    values = {}
    for key in REPORT_KEYS:
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MalformedMessage(f"{key} must be a finite number, got {value!r}"[:200])
        values[key] = float(value)
    examples = values[NUM_EXAMPLES]
    if not examples.is_integer() or not 1 <= examples <= MAX_REPORTED_EXAMPLES:
        raise MalformedMessage(f"{NUM_EXAMPLES} must be an integer in [1, {MAX_REPORTED_EXAMPLES:.0e}], got {examples}")
    if not 0 <= values[TEST_ACCURACY] <= 1:
        raise MalformedMessage(f"{TEST_ACCURACY} must be in [0, 1], got {values[TEST_ACCURACY]}")
    if values[TEST_LOSS] < 0:
        raise MalformedMessage(f"{TEST_LOSS} must be >= 0, got {values[TEST_LOSS]}")
    return int(examples), values[TEST_LOSS], values[TEST_ACCURACY]


def combine(reports: Sequence[tuple[int, float, float]]) -> dict[str, float]:
    """Example-weighted test loss and accuracy of the reports, each count capped at their (low) median."""
    if not reports:
        return {}
    cap = statistics.median_low(n for n, _, _ in reports)
    weights = [min(n, cap) for n, _, _ in reports]
    total = sum(weights)
    return {
        TEST_LOSS: sum(w * loss for w, (_, loss, _) in zip(weights, reports, strict=True)) / total,
        TEST_ACCURACY: sum(w * acc for w, (_, _, acc) in zip(weights, reports, strict=True)) / total,
    }
