"""Shared fixtures: small configs that run in seconds on the synthetic dataset."""

from __future__ import annotations

import pytest
import torch

from fl_dp.config import RunConfig


@pytest.fixture(autouse=True)
def _fixed_torch_seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def flower_task():
    """Flower's task identity as a ClientApp / ServerApp runtime sets it (messages built outside one need it)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


@pytest.fixture
def tiny_cfg() -> RunConfig:
    """Logistic regression on the synthetic task, 4 clients: a round takes milliseconds."""
    return RunConfig(
        strategy="fedavg",
        dataset="synthetic",
        model="logreg",
        num_clients=4,
        clients_per_round=4,
        num_server_rounds=3,
        batch_size=0,
        eval_samples=0,
        results_dir="unused",
    )


@pytest.fixture
def short_run(tiny_cfg):
    """``strategy, **changes -> config``: 2 rounds of minibatch 8, each strategy with what it needs to
    run and move visibly (DP-SGD its noise, the sign vote a step small enough not to diverge)."""
    needs = {"sign-vote": dict(server_lr=0.01), "dp-sgd": dict(noise_multiplier=1.0), "dp-sgd-rs": dict(noise_multiplier=1.0)}

    def config(strategy: str, **changes) -> RunConfig:
        return tiny_cfg.replace(strategy=strategy, batch_size=8, num_server_rounds=2, **{**needs.get(strategy, {}), **changes})

    return config
