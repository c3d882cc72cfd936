"""A simulation on an existing two-node Ray cluster (head + one worker, started with the `ray` CLI on
this machine, each node with one CPU and its own resource): clients run on both nodes, and the
run equals the in-process loop's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fl_dp import RunConfig
from fl_dp.inprocess import InProcessFederation

RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(*args: str, env: dict[str, str]) -> None:
    result = subprocess.run([str(RAY), *args], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


@pytest.fixture
def two_node_cluster(tmp_path):
    """``127.0.0.1:<port>`` of a Ray cluster: a head and a worker node, 1 CPU each."""
    temp_dir = Path(f"/tmp/fl-dp-rc-{os.getpid()}")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": str(temp_dir), "RAY_USAGE_STATS_ENABLED": "0"}
    port = _free_port()
    common = ["--num-cpus", "1", "--object-store-memory", str(200 * 2**20), "--disable-usage-stats"]
    try:
        _ray("start", "--head", "--port", str(port), "--temp-dir", str(temp_dir), "--include-dashboard=false",
             "--resources", '{"head-node": 1}', *common, env=env)
        _ray("start", "--address", f"127.0.0.1:{port}", "--resources", '{"worker-node": 1}', *common, env=env)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=180)


@pytest.mark.slow
def test_a_simulation_on_a_two_node_ray_cluster_uses_both_nodes(two_node_cluster, tmp_path):
    import ray
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.simulation import run_simulation

    from clients.client_app import secure_aggregation_mod, train_with
    from strategies import build_apps

    cfg = RunConfig(strategy="alpha-normec", dataset="synthetic", model="logreg", num_clients=6, clients_per_round=6,
                    num_server_rounds=3, batch_size=0, eval_samples=0, server_lr=0.5, results_dir=str(tmp_path))
    run = build_apps(cfg)
    placements = tmp_path / "placements"
    placements.mkdir()
    # the run's own ClientApp, writing down which Ray node served each message
    recording = ClientApp(mods=[secure_aggregation_mod])

    @recording.train()
    def _train(msg: Message, context: Context) -> Message:
        node = ray.get_runtime_context().get_node_id()
        (placements / f"{os.getpid()}-{context.node_id}-{msg.metadata.message_id[:12]}").write_text(node)
        return train_with(msg, context, cfg)

    run_simulation(
        server_app=run.server_app, client_app=recording, num_supernodes=cfg.num_clients,
        backend_config={"init_args": {"address": two_node_cluster}, "client_resources": {"num_cpus": 1}},
    )
    assert run.core is not None, "the ServerApp did not finish"
    nodes = {path.read_text() for path in placements.iterdir()}
    assert len(list(placements.iterdir())) == 3 * 6
    assert len(nodes) == 2  # messages served on the head and on the worker node
    replay = InProcessFederation(cfg, partitions=run.core.client_partitions())
    expected = replay.run()
    volatile = ["round-seconds"]
    pd.testing.assert_frame_equal(run.history.drop(columns=volatile), expected.drop(columns=volatile), check_dtype=False, atol=1e-6)
