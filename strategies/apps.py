"""Flower apps of a run built from Python, for notebooks and scripts (no pyproject config needed).

    from fl_dp import RunConfig
    from strategies import simulate

    run = simulate(RunConfig(strategy="alpha-normec", num_clients=10, clients_per_round=10, num_server_rounds=5))
    run.history            # one row per round (a DataFrame), from the strategy's Result
    run.core.ledger        # every client's privacy ledger

:func:`build_apps` gives the ``ServerApp`` and ``ClientApp`` of a :class:`~fl_dp.config.RunConfig`
to pass to ``flwr.simulation.run_simulation`` yourself; :func:`simulate` does that on Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from clients.client_app import evaluate_with, secure_aggregation_mod, train_with
from fl_dp.config import RunConfig
from fl_dp.server import ServerCore
from strategies.server_app import run_server


@dataclass
class FlowerRun:
    """A run's two Flower apps, and what its ServerApp left once it finished."""

    cfg: RunConfig
    server_app: ServerApp
    client_app: ClientApp
    core: ServerCore | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)


def build_apps(cfg: RunConfig) -> FlowerRun:
    """The ServerApp and ClientApp of ``cfg`` (the run config comes from here, not from Flower's
    run config). ``cfg.num_clients`` must match the simulation's number of SuperNodes."""
    cfg.require_population()
    server_app = ServerApp()
    client_app = ClientApp(mods=[secure_aggregation_mod])
    run = FlowerRun(cfg=cfg, server_app=server_app, client_app=client_app)

    @server_app.main()
    def _server(grid: Grid, context: Context) -> None:
        run.core, run.history = run_server(grid, cfg)

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train_with(msg, context, cfg)

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_with(msg, context, cfg)

    return run


def simulate(
    cfg: RunConfig, *, num_cpus: float = 1.0, num_gpus: float = 0.0, backend_config: dict[str, Any] | None = None
) -> FlowerRun:
    """Run ``cfg`` as a Flower simulation on Ray, ``cfg.num_clients`` virtual SuperNodes, each with
    ``num_cpus`` CPUs and ``num_gpus`` GPUs; returns the run with its per-round history."""
    from flwr.simulation import run_simulation

    run = build_apps(cfg)
    config = backend_config or {"client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus}}
    run_simulation(server_app=run.server_app, client_app=run.client_app, num_supernodes=cfg.num_clients, backend_config=config)
    if run.core is None:
        raise RuntimeError("the simulation ended before the ServerApp finished: see Flower's log above")
    return run
