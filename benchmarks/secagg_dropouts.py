"""Rounds that survive clients leaving during SecAgg+: Flower's workflow beside fl-dp's, same dropouts.

Under `distributed` every round runs SecAgg+'s four stages (setup, share keys, collect masked
vectors, unmask). Here each sampled client leaves, with probability `p` a round, at one of the four
stages drawn uniformly, and answers nothing more that round (it is back the next). Both server
workflows see exactly the same dropouts (one seeded draw per round and client), and the global RNG
from which SecAgg+ draws each round's ring of neighbours is seeded alike:

- `flower`: flwr's own `SecAggPlusWorkflow`;
- `fl-dp`: `strategies.secagg_bridge.DropoutTolerantSecAggPlus`, which takes a client that left
  before sharing its keys out of the round instead of asking its neighbours for key shares they
  never received.

Everything else is the real code path: Flower's client mod and fl-dp's ClientApp on each client,
Flower's workflow on the server, fl-dp's strategy around it; only the transport is in process (a
failing client becomes an error reply, as Flower's runtime makes it). alpha-NormEC, logistic
regression on the synthetic task, eps 8, every client sampled each round (q = 1), 7 SecAgg+
shares, `secagg-survivors = 0.5`. Prints the rounds each workflow completed and their ratio, and
writes ``results/secagg_dropouts.csv``.

    python -m benchmarks.secagg_dropouts            # 20 clients, 20 rounds, p in {0.02, 0.05, 0.1} (about 1 min)
    python -m benchmarks.secagg_dropouts --full     # 50 clients, 50 rounds, p in {0.01, 0.02, 0.05, 0.1, 0.2}
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import non_negative_int, output_file

ROOT = Path(__file__).parents[1]
STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")


class DroppingGrid:
    """Delivers each SecAgg+ stage message to its node's ClientApp in process; a node drawn to leave
    a round at stage s (``leave_at[round][node]``) answers nothing more that round from s on, and a
    ClientApp that raises answers an error."""

    def __init__(self, contexts: dict[int, Any], leave_at: dict[int, dict[int, str]]) -> None:
        self.contexts, self.leave_at = contexts, leave_at

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: list[Any], *, timeout: float | None = None) -> list[Any]:
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode

        from clients.client_app import app as client_app

        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            stage = message.content.config_records["secaggplus_configs"]["stage"]
            leave = self.leave_at.get(int(message.metadata.group_id), {}).get(node)  # the workflow's group id is the round
            if leave is not None and STAGES.index(stage) >= STAGES.index(leave):
                continue
            try:
                replies.append(client_app(copy.deepcopy(message), self.contexts[node]))
            except Exception as err:  # noqa: BLE001 - Flower's runtime turns it into an error reply
                replies.append(Message(error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, repr(err)[:200]), reply_to=message))
        return replies


def secure_rounds(cfg: Any, rounds: int, make_grid: Any, workflow: Any = None) -> tuple[Any, Any]:
    """``rounds`` rounds of ``cfg`` (a distributed run) through fl-dp's strategy and SecAgg+ bridge,
    on ``make_grid(contexts)``, a Grid that delivers messages to the ClientApps of nodes 101, 102, ...
    in process (``workflow``: the SecAgg+ server workflow, the bridge's by default). Returns the
    server core and that Grid."""
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fl_dp.server import ServerCore
    from strategies.fl_dp_strategy import FlDpStrategy
    from strategies.secagg_bridge import SecAggPlusGrid

    # messages built outside a Flower runtime need the task identity a runtime would set
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    contexts = {
        101 + i: Context(run_id=1, node_id=101 + i, node_config={"partition-id": i, "num-partitions": cfg.num_clients},
                         state=RecordDict(), run_config=cfg.to_flwr())
        for i in range(cfg.num_clients)
    }
    core = ServerCore(cfg)
    strategy = FlDpStrategy(core)
    inner = make_grid(contexts)
    grid = strategy.secure = SecAggPlusGrid(inner, core.distributed, cfg.secagg_num_shares, None)
    if workflow is not None:
        grid.workflow = workflow
    arrays = strategy.initial_arrays()
    for server_round in range(1, rounds + 1):
        grid.send_and_receive(list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid)))
        arrays, _ = strategy.aggregate_train(server_round, [])  # SecAgg+ answered inside the grid
        strategy.evaluate(server_round, arrays)  # as Flower's loop does after each round
    return core, inner


def run(workflow_name: str, num_clients: int, rounds: int, p: float, seed: int) -> dict[str, Any]:
    """One run of ``rounds`` rounds with the given workflow; the same dropouts for the same seed."""
    from flwr.server.workflow import SecAggPlusWorkflow

    from fl_dp.config import RunConfig
    from strategies.secagg_bridge import DropoutTolerantSecAggPlus

    cfg = RunConfig(
        strategy="alpha-normec", privacy_model="distributed", target_epsilon=8.0, dataset="synthetic", model="logreg",
        num_clients=num_clients, clients_per_round=num_clients, num_server_rounds=rounds, batch_size=0,
        eval_samples=0, secagg_num_shares=7, secagg_survivors=0.5, seed=seed, results_dir=str(ROOT / "results"),
    )
    dropouts = np.random.default_rng([seed, 0xD209])
    leave_at = {}
    for server_round in range(1, rounds + 1):
        leaving = dropouts.random(num_clients) < p
        stages = dropouts.integers(len(STAGES), size=num_clients)
        leave_at[server_round] = {101 + i: STAGES[s] for i, (go, s) in enumerate(zip(leaving, stages)) if go}
    random.seed(seed)  # SecAggPlusWorkflow draws each round's ring of neighbours from the global RNG
    started = time.perf_counter()
    workflow = SecAggPlusWorkflow if workflow_name == "flower" else DropoutTolerantSecAggPlus
    core, _ = secure_rounds(cfg, rounds, lambda contexts: DroppingGrid(contexts, leave_at), workflow)
    history = core.history()
    return {
        "workflow": workflow_name, "num_clients": num_clients, "rounds": rounds, "dropout_probability": p, "seed": seed,
        "clients_left": sum(len(nodes) for nodes in leave_at.values()), "rounds_completed": int((history["skipped"] == "").sum()),
        "shares_summed": int(history["accepted"].sum()), "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    import logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="50 clients, 50 rounds, five dropout probabilities")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--out", type=output_file, default=ROOT / "results" / "secagg_dropouts.csv")
    args = parser.parse_args()
    logging.disable(logging.ERROR)  # each lost round is logged as an error; the table says it
    num_clients, rounds, probabilities = (50, 50, (0.01, 0.02, 0.05, 0.1, 0.2)) if args.full else (20, 20, (0.02, 0.05, 0.1))
    rows = [run(name, num_clients, rounds, p, args.seed) for p in probabilities for name in ("flower", "fl-dp")]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    for p in probabilities:
        pair = table[table["dropout_probability"] == p].set_index("workflow")["rounds_completed"]
        print(f"p = {p}: rounds completed, Flower's workflow {pair['flower']} of {rounds}, fl-dp's {pair['fl-dp']} of {rounds}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
