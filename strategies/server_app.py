"""The Flower ServerApp: read the run config, run the strategy, write the metrics CSV."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_dp import results
from fl_dp.checkpoint import results_dir_error, run_dir
from fl_dp.config import RunConfig
from fl_dp.results import history_from_result
from fl_dp.server import ServerCore
from fl_dp.task import release_training_data
from strategies import flower_grid, flower_linkstate
from strategies.fl_dp_strategy import FlDpStrategy, wait_for_federation, wait_for_nodes, wait_for_simulated_nodes

log = logging.getLogger("fl_dp")


def configure_logging(cfg: RunConfig | None = None) -> Path | None:
    """fl-dp's progress lines on stderr; with ``cfg``, every Flower and fl-dp record (DEBUG) also in
    results-dir/<run>/flower.log, and Flower's own console lines only with ``verbose``. Returns the log's path."""
    if not any(getattr(h, "fl_dp_console", False) for h in log.handlers):
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s fl-dp: %(message)s"))
        handler.setLevel(logging.INFO)
        handler.fl_dp_console = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    if cfg is None:
        return None
    path = run_dir(cfg) / "flower.log"
    flower = logging.getLogger("flwr")
    for logger in (flower, log):
        for old in [h for h in logger.handlers if getattr(h, "fl_dp_file", False)]:
            logger.removeHandler(old)
            old.close()
        try:
            file_handler = logging.FileHandler(path)
        except OSError as err:
            raise results_dir_error(cfg, path, err) from None
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler.fl_dp_file = True  # type: ignore[attr-defined]
        logger.addHandler(file_handler)
    if not cfg.verbose:
        # Flower's round-by-round INFO lines repeat what the progress line says; warnings still show
        for handler in flower.handlers:
            if not getattr(handler, "fl_dp_file", False):
                handler.setLevel(logging.WARNING)
        flower.propagate = False  # the simulation's root handler printed each record a second time
    return path


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, RunConfig.from_flwr(context.run_config))


def run_server(grid: Grid, cfg: RunConfig) -> tuple[ServerCore, pd.DataFrame]:
    """The whole server side of a run on ``grid``: wait for the nodes, run the strategy, write the
    CSV, PNG and log. Returns the server core and the per-round table (from Flower's ``Result``)."""
    # In a simulation the ServerApp shares its process with the engine's in-memory LinkState;
    # elsewhere (a SuperLink of a deployment) this changes nothing the run uses.
    flower_linkstate.install()
    grid = flower_grid.prompt(grid)
    log_path = configure_logging(cfg)
    if cfg.num_clients:
        cfg = cfg.for_federation(cfg.num_clients)
        core = ServerCore(cfg)  # a bad config fails here, before any wait
        if flower_grid.is_simulation(grid):
            wait_for_simulated_nodes(grid, cfg.num_clients, cfg.node_wait_timeout)
        else:
            wait_for_nodes(grid, cfg.num_clients, cfg.node_wait_timeout, at_least=cfg.min_clients_per_round)
    else:
        nodes = wait_for_federation(grid, cfg.node_wait_timeout)
        cfg = cfg.for_federation(len(nodes))
        log.info("num-clients = 0: the federation's %d SuperNodes, %d a round", cfg.num_clients, cfg.clients_per_round)
        core = ServerCore(cfg)
    core.resume()
    # the clients train elsewhere: keep the test split the evaluator holds, not the training images
    release_training_data()
    log.debug("the ServerApp's process released its copy of the training data")
    strategy = FlDpStrategy(core, first_round=core.completed_rounds + 1)
    if core.distributed is not None:
        from strategies.secagg_bridge import SecAggPlusGrid

        strategy.secure = SecAggPlusGrid(grid, core.distributed, cfg.secagg_num_shares, cfg.round_timeout)
        grid = strategy.secure  # a Grid that runs SecAgg+ for each round's training messages
    result = strategy.start(
        grid=grid,
        initial_arrays=strategy.current_arrays(),
        num_rounds=cfg.num_server_rounds - core.completed_rounds,
        timeout=cfg.round_timeout,
        evaluate_fn=strategy.evaluate,
    )
    history = history_from_result(result, core.rows, first_round=core.resumed_from + 1)
    csv_path, png_path = results.save(history, core.results_path())
    final: dict[Any, Any] = history.iloc[-1].to_dict() if len(history) else {}
    log.info("final: test-accuracy=%s epsilon-max=%s", final.get("test-accuracy"), final.get("epsilon-max"))
    log.info("per-round metrics written to %s, plot to %s", csv_path.resolve(), png_path.resolve())
    log.info("Flower's full log: %s", Path(log_path).resolve() if log_path else "-")
    return core, history
