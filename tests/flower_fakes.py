"""Stand-ins for what Flower hands a strategy and a ClientApp, for tests that drive them message by message."""

from __future__ import annotations

from flwr.app import Context, RecordDict


class FakeGrid:
    """A Grid that only lists its nodes (``configure_train`` / ``configure_evaluate`` ask for them)."""

    def __init__(self, node_ids):
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


def contexts_for(cfg, node_ids):
    """A fresh Flower Context per node, node ``node_ids[i]`` serving partition ``i`` of ``cfg``."""
    return {
        node: Context(run_id=1, node_id=node, node_config={"partition-id": i, "num-partitions": cfg.num_clients},
                      state=RecordDict(), run_config=cfg.to_flwr())
        for i, node in enumerate(node_ids)
    }
