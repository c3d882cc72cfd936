"""A real deployment on 127.0.0.1: SuperLink + 2 SuperNodes over TLS, 2 rounds of alpha-NormEC."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fl_dp.config import RunConfig
from fl_dp.inprocess import run_inprocess

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_tls_deployment_two_supernodes_two_rounds_of_alpha_normec(tmp_path):
    settings = dict(
        strategy="alpha-normec", dataset="synthetic", model="logreg", batch_size=0, num_server_rounds=2,
        server_lr=0.5, target_epsilon=4.0, num_clients=2, clients_per_round=2,
    )
    run_config = " ".join(f"{k.replace('_', '-')}={v!r}" if isinstance(v, str) else f"{k.replace('_', '-')}={v}" for k, v in settings.items())
    run_config += f" os-randomness=false run-name='deploy' results-dir='{tmp_path}'"
    env = {**os.environ, "FL_DP_VENV": str(Path(sys.executable).parent.parent), "FL_DP_DEPLOY_PORT": str(20000 + os.getpid() % 2000 * 5)}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "deploy.sh"), "2", "--run-config", run_config.replace('"', "'")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    history = pd.read_csv(tmp_path / "deploy.csv")
    assert list(history["round"]) == [1, 2] and (history["accepted"] == 2).all()
    assert history["epsilon-max"].iloc[-1] <= 4.0
    # each SuperNode's own privacy ledger persisted across rounds: it composes to the server's epsilon
    assert np.allclose(history["client-epsilon-max"], history["epsilon-max"], rtol=1e-12, atol=0)
    # error-feedback state persisted in the SuperNodes: same trajectory as the in-process loop
    reference = run_inprocess(RunConfig(**settings, eval_samples=2000, results_dir=str(tmp_path)))
    assert np.allclose(history["test-loss"], reference["test-loss"], rtol=1e-5)


@pytest.mark.slow
def test_supernode_authentication_keeps_an_unregistered_node_out(tmp_path):
    """What deploy.sh sets up: a SuperLink with --enable-supernode-auth admits only SuperNodes whose
    public key was registered; a process with any other key never joins."""
    import json
    import shutil
    import time

    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "home"), "FLWR_TELEMETRY_ENABLED": "0", "PATH": f"{venv_bin}:{os.environ['PATH']}"}
    (tmp_path / "home").mkdir()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_certs.py"), str(tmp_path / "certs")], check=True, capture_output=True)
    port = 22000 + os.getpid() % 2000 * 4
    certs = tmp_path / "certs"
    (tmp_path / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "t"\n[superlink.t]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{certs}/ca.crt"\n'
    )
    procs = []
    try:
        procs.append(subprocess.Popen(
            ["flower-superlink", "--ssl-ca-certfile", f"{certs}/ca.crt", "--ssl-certfile", f"{certs}/server.pem",
             "--ssl-keyfile", f"{certs}/server.key", "--host", "127.0.0.1", "--port", str(port),
             "--database", str(tmp_path / "sl.db"), "--enable-supernode-auth", "--disable-runtime-dependency-installation"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        for name in ("registered", "intruder"):
            subprocess.run([shutil.which("ssh-keygen"), "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(tmp_path / name)], check=True)
        for _ in range(30):
            registered = subprocess.run(["flwr", "supernode", "register", str(tmp_path / "registered.pub"), "t", "--format", "json"],
                                        env=env, capture_output=True, text=True)
            if registered.returncode == 0 and '"success": true' in registered.stdout:
                break
            time.sleep(1)
        node_id = json.loads(registered.stdout)["node-id"]
        for i, name in enumerate(("registered", "intruder")):
            procs.append(subprocess.Popen(
                ["flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", f"{certs}/ca.crt",
                 "--auth-supernode-private-key", str(tmp_path / name), "--node-config", f"partition-id={i} num-partitions=2",
                 "--host", "127.0.0.1", "--port", str(port + 1 + i)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listing = subprocess.run(["flwr", "supernode", "ls", "t", "--format", "json"], env=env, capture_output=True, text=True)
            nodes = json.loads(listing.stdout).get("nodes", []) if listing.returncode == 0 else []
            if any(n["status"] == "online" for n in nodes):
                break
            time.sleep(1)
        time.sleep(5)  # give the intruder time to try
        nodes = json.loads(subprocess.run(["flwr", "supernode", "ls", "t", "--format", "json"], env=env, capture_output=True, text=True).stdout)["nodes"]
        assert [(str(n["node-id"]), n["status"]) for n in nodes] == [(str(node_id), "online")]
    finally:
        for proc in procs:
            proc.kill()


def _write_sites(directory, rows_by_name, seed):
    """One CSV per name: 4 standard-normal features, label = (f0 - f1 > 0), a linear rule."""
    rng = np.random.default_rng(seed)
    for name, rows in rows_by_name:
        x = rng.standard_normal((rows, 4))
        frame = pd.DataFrame({f"f{j}": x[:, j] for j in range(4)})
        frame["label"] = (x[:, 0] - x[:, 1] > 0).astype(int)
        frame.to_csv(directory / f"{name}.csv", index=False)


def _deploy_two_sites(tmp_path, run_config, port_base):
    """deploy.sh with 2 SuperNodes, SuperNode i on tmp_path/site-i.csv (FL_DP_NODE_DATA)."""
    env = {**os.environ, "FL_DP_VENV": str(Path(sys.executable).parent.parent),
           "FL_DP_DEPLOY_PORT": str(port_base + os.getpid() % 2000 * 5), "FL_DP_NODE_DATA": str(tmp_path / "site-%i.csv")}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "deploy.sh"), "2", "--run-config", run_config],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]


@pytest.mark.slow
def test_tls_deployment_two_supernodes_with_their_own_files(tmp_path):
    """Each SuperNode trains on its own local CSV (node config data-path, via FL_DP_NODE_DATA); the
    server only has the test set it evaluates on."""
    _write_sites(tmp_path, (("server", 400), ("site-0", 300), ("site-1", 120)), seed=0)
    run_config = (
        f"strategy='fedavg' dataset='files:{tmp_path / 'server.csv'}' model='logreg' batch-size=0 num-server-rounds=3 "
        f"client-lr=0.5 local-epochs=5 run-name='sites' results-dir='{tmp_path}'"
    )
    _deploy_two_sites(tmp_path, run_config, port_base=24000)
    history = pd.read_csv(tmp_path / "sites.csv")
    assert list(history["accepted"]) == [2, 2, 2]
    assert history["test-accuracy"].iloc[-1] > 0.85  # learnt from the sites' files (the rule is linear)


@pytest.mark.slow
def test_tls_deployment_federated_evaluation_without_server_data(tmp_path):
    """Two SuperNodes with their own files and no data on the server (dataset = schema:4:2): each
    site tests the model on its held-out rows and the server combines their reports."""
    _write_sites(tmp_path, (("site-0", 300), ("site-1", 150)), seed=1)
    run_config = (
        "strategy='fedavg' dataset='schema:4:2' evaluation='federated' model='logreg' batch-size=0 num-server-rounds=3 "
        f"client-lr=0.5 local-epochs=5 run-name='federated-eval' results-dir='{tmp_path}'"
    )
    _deploy_two_sites(tmp_path, run_config, port_base=26000)
    history = pd.read_csv(tmp_path / "federated-eval.csv")
    assert list(history["accepted"]) == [2, 2, 2]
    assert list(history["evaluated-clients"]) == [2, 2, 2] and list(history["evaluation-rejected"]) == [0, 0, 0]
    assert history["test-accuracy"].iloc[-1] > 0.85  # on the sites' own held-out rows
