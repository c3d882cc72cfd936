"""The Flower ServerApp: read the run config, run the strategy, write the metrics CSV."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_dp.config import RunConfig
from fl_dp.federation import ServerCore
from strategies import flower_linkstate
from strategies.fl_dp_strategy import FlDpStrategy, wait_for_federation, wait_for_nodes

log = logging.getLogger("fl_dp")


def configure_logging() -> None:
    """fl-dp's progress lines on stderr, once, without touching the root logger (flwr has its own handler)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s fl-dp: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_logging()
    # In a simulation the ServerApp shares its process with the engine's in-memory LinkState;
    # elsewhere (a SuperLink of a deployment) this changes nothing the run uses.
    flower_linkstate.install()
    cfg = RunConfig.from_flwr(context.run_config)
    if cfg.num_clients:
        cfg = cfg.for_federation(cfg.num_clients)
        core = ServerCore(cfg)  # a bad config fails here, before any wait
        wait_for_nodes(grid, cfg.num_clients, cfg.node_wait_timeout, at_least=cfg.min_clients_per_round)
    else:
        nodes = wait_for_federation(grid, cfg.node_wait_timeout)
        cfg = cfg.for_federation(len(nodes))
        log.info("num-clients = 0: the federation's %d SuperNodes, %d a round", cfg.num_clients, cfg.clients_per_round)
        core = ServerCore(cfg)
    core.resume()
    strategy = FlDpStrategy(core, first_round=core.completed_rounds + 1)
    if core.distributed is not None:
        from strategies.secagg_bridge import SecAggPlusGrid

        grid = strategy.secure = SecAggPlusGrid(grid, core.distributed, cfg.secagg_num_shares, cfg.round_timeout)
    strategy.start(
        grid=grid,
        initial_arrays=strategy.initial_arrays(),
        num_rounds=cfg.num_server_rounds - core.completed_rounds,
        timeout=cfg.round_timeout,
    )
    path = core.save()
    log.info("per-round metrics written to %s", path.resolve())
    final = core.rows[-1] if core.rows else {}
    log.info(
        "final: test-accuracy=%s epsilon-max=%s",
        final.get("test-accuracy"),
        final.get("epsilon-max"),
    )
