"""Faults in a real deployment (SuperLink + 3 SuperNodes, TLS, SuperNode authentication, as in
deploy.sh): a SuperNode killed mid-run and restarted (with Flower's own SuperNode runtime and with
deploy.sh's default, scripts/flower_runtime.py's prompt SuperNode and long-lived ClientApp process),
and a run stopped and resumed from its checkpoint (on deploy.sh's runtime). A run that outlives its
wait fails with the run's log, every process log's tail and the Flower processes alive."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fl_dp.config import RunConfig
from fl_dp.inprocess import run_inprocess

ROOT = Path(__file__).parents[1]
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow
#: log lines of the processes' polling, left out of a stalled run's diagnosis
POLLING = re.compile(r"AcquireTask|Heartbeat|Runtime\.PullObject|list-runs|ListRuns")


class Federation:
    """One SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, each node with its own key and state-dir."""

    def __init__(self, tmp_path: Path, num_nodes: int, warm: bool = False) -> None:
        self.tmp = tmp_path
        self.num_nodes = num_nodes
        self.warm = warm  # deploy.sh's default runtime (scripts/flower_runtime.py) instead of Flower's own
        self.port = 24000 + os.getpid() % 1500 * 6
        self.env = {**os.environ, "FLWR_HOME": str(tmp_path / "home"), "FLWR_TELEMETRY_ENABLED": "0",
                    "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        self.env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)
        (tmp_path / "home").mkdir()
        self.certs = tmp_path / "certs"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_certs.py"), str(self.certs)], check=True, capture_output=True)
        (tmp_path / "home" / "config.toml").write_text(
            f'[superlink]\ndefault = "t"\n[superlink.t]\naddress = "127.0.0.1:{self.port}"\n'
            f'root-certificates = "{self.certs}/ca.crt"\n'
        )
        self.superlink = self._spawn(
            ["flower-superlink", "--ssl-ca-certfile", f"{self.certs}/ca.crt", "--ssl-certfile", f"{self.certs}/server.pem",
             "--ssl-keyfile", f"{self.certs}/server.key", "--host", "127.0.0.1", "--port", str(self.port),
             "--database", str(tmp_path / "superlink.db"), "--enable-supernode-auth",
             "--disable-runtime-dependency-installation"], "superlink")
        self.nodes: dict[int, subprocess.Popen] = {}
        self.clientapps: dict[int, subprocess.Popen] = {}
        for i in range(num_nodes):
            key = tmp_path / f"node-{i}"
            subprocess.run([shutil.which("ssh-keygen"), "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(key)], check=True)
            for _ in range(30):
                if self.flwr("supernode", "register", f"{key}.pub", "t").returncode == 0:
                    break
                time.sleep(1)
            self.start_node(i)

    def _spawn(self, command, name):
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_node(self, i: int) -> None:
        runtime = [sys.executable, str(ROOT / "scripts" / "flower_runtime.py")]
        supernode = [*runtime, "supernode", "--isolation", "process"] if self.warm else ["flower-supernode"]
        runtime_port = self.port + 1 + i
        self.nodes[i] = self._spawn(
            [*supernode, "--superlink", f"127.0.0.1:{self.port}", "--root-certificates", f"{self.certs}/ca.crt",
             "--auth-supernode-private-key", str(self.tmp / f"node-{i}"),
             "--node-config", f"partition-id={i} num-partitions={self.num_nodes} state-dir='{self.tmp / f'state-{i}'}'",
             "--host", "127.0.0.1", "--port", str(runtime_port)], f"supernode-{i}")
        if self.warm:
            self.clientapps[i] = self._spawn(
                [*runtime, "clientapp", "--runtime-api-address", f"127.0.0.1:{runtime_port}", "--insecure"], f"clientapp-{i}")

    def kill_node(self, i: int) -> None:
        """The node's machine goes down: its SuperNode and, with the warm runtime, its ClientApp process."""
        for proc in (self.nodes[i], self.clientapps.pop(i, None)):
            if proc is not None:
                proc.kill()
                proc.wait()

    def flwr(self, *args, timeout=120):
        return subprocess.run(["flwr", *args], env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def run(self, run_config: str) -> str:
        started = self.flwr("run", ".", "t", "--run-config", run_config)
        assert started.returncode == 0, started.stdout + started.stderr
        return re.search(r"Successfully started run (\d+)", started.stdout + started.stderr).group(1)

    def log(self, run_id: str) -> str:
        return self.flwr("log", run_id, "t", "--show").stdout

    def status(self, run_id: str) -> str:
        listed = self.flwr("ls", "t", "--run-id", run_id, "--format", "json")
        return json.loads(listed.stdout)["runs"][0]["status"]

    def wait_for(self, run_id: str, pattern: str, timeout: float = 400) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log(run_id)
            if re.search(pattern, log):
                return log
            assert not self.status(run_id).startswith("finished"), log[-4000:]
            time.sleep(2)
        raise AssertionError(f"no {pattern!r} in the run's log after {timeout} s:\n{self.log(run_id)[-4000:]}")

    def wait_until_finished(self, run_id: str, timeout: float = 500) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(2)
        raise AssertionError(f"run {run_id} not finished after {timeout} s\n{self.diagnosis(run_id)}")

    def diagnosis(self, run_id: str) -> str:
        """The run's log and every process log's tail, so a stalled run in CI says where it stalled."""
        tails = [f"--- flwr log {run_id}\n{self.log(run_id)[-3000:]}"]
        for path in sorted(self.tmp.glob("*.log")):
            lines = [line for line in path.read_text(errors="replace").splitlines() if not POLLING.search(line)]
            tails.append(f"--- {path.name}\n" + "\n".join(lines[-25:]))
        processes = subprocess.run(["ps", "-eo", "pid,ppid,etimes,args"], capture_output=True, text=True).stdout
        flower = [line[:200] for line in processes.splitlines() if "flwr" in line or "flower" in line]
        tails.append("--- flwr processes\n" + "\n".join(flower))
        return "\n".join(tails)

    def close(self) -> None:
        for proc in [*self.clientapps.values(), *self.nodes.values(), self.superlink]:
            proc.kill()
            proc.wait()


SETTINGS = dict(
    strategy="alpha-normec", dataset="synthetic", model="logreg", batch_size=0, server_lr=0.5, noise_multiplier=0.8,
    num_clients=3, clients_per_round=3,
)


def _run_config(tmp_path, **extra):
    settings = {**SETTINGS, **extra}
    pairs = [f"{k.replace('_', '-')}='{v}'" if isinstance(v, str) else f"{k.replace('_', '-')}={str(v).lower() if isinstance(v, bool) else v}"
             for k, v in settings.items()]
    return " ".join(pairs) + f" os-randomness=false results-dir='{tmp_path / 'results'}'"


@pytest.fixture
def make_federation(tmp_path):
    """``make_federation(warm)``: a 3-node federation on either runtime, closed after the test."""
    made = []

    def make(warm: bool) -> Federation:
        made.append(Federation(tmp_path, 3, warm=warm))
        return made[-1]

    yield make
    for fed in made:
        fed.close()


def _completed_with_the_node_back(federation, run_id, tmp_path, run_name, rounds):
    """The run's per-round table, once it has completed every round with the restarted node back and
    the restarted client's own ledger (restored from its disk) agreeing with the server's."""
    assert federation.wait_until_finished(run_id) == "finished:completed", federation.diagnosis(run_id)
    history = pd.read_csv(tmp_path / "results" / f"{run_name}.csv")
    assert list(history["round"]) == list(range(1, rounds + 1))
    assert history["accepted"].iloc[-1] == 3  # it came back and was sampled again
    assert "below the server's ledger" not in federation.log(run_id)  # its own ledger came back from its disk
    assert np.isclose(history["client-epsilon-max"].iloc[-1], history["epsilon-max"].iloc[-1], rtol=1e-9)
    return history


@pytest.mark.parametrize("warm", [False, True], ids=["flowers-runtime", "warm-runtime"])
def test_a_supernode_stopped_and_restarted_mid_run_does_not_end_it(make_federation, tmp_path, warm):
    # the warm runtime's rounds take about a second, Flower's about ten; a restarted node needs a
    # few seconds (SuperNode, ClientApp process, the app's first import) to take part again
    rounds = 40 if warm else 6
    federation = make_federation(warm)
    run_id = federation.run(_run_config(tmp_path, num_server_rounds=rounds, min_clients_per_round=2, round_timeout=120.0,
                                        run_name="restart"))
    federation.wait_for(run_id, rf"round 1/{rounds}:")
    federation.kill_node(1)
    federation.wait_for(run_id, rf"round 3/{rounds}:")  # rounds go on with the two others
    federation.start_node(1)
    history = _completed_with_the_node_back(federation, run_id, tmp_path, "restart", rounds)
    assert (history["accepted"] >= 2).all() and (history["accepted"] == 2).any()


def test_a_supernode_restarted_at_once_after_a_crash_rejoins_when_its_old_session_expires(make_federation, tmp_path):
    """The SuperLink counts a crashed node online for two heartbeats (60 s) and refuses to activate
    it again until then; flower-supernode would exit (code 305), deploy.sh's runtime asks again."""
    # the node asks every 5 s and needs a few more to serve: the rounds after its old session expires
    # (about 0.6 s each here) must outlast that, or the run ends before it is back (10 rounds did not)
    rounds = 30
    federation = make_federation(True)
    run_id = federation.run(_run_config(tmp_path, num_server_rounds=rounds, min_clients_per_round=2, round_timeout=180.0,
                                        run_name="crash"))
    federation.wait_for(run_id, rf"round 1/{rounds}:")
    federation.kill_node(1)
    federation.start_node(1)  # as a supervisor restarts a crashed service: within a second
    _completed_with_the_node_back(federation, run_id, tmp_path, "crash", rounds)
    assert "refuses to activate this SuperNode" in (tmp_path / "supernode-1.log").read_text()


def test_a_stopped_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_does(make_federation, tmp_path):
    # on deploy.sh's default runtime (1 s rounds); a reply lost once costs its round 120 s (not the
    # default 600 s, past the wait) and the trajectory check below names it
    rounds = 40
    federation = make_federation(True)
    config = _run_config(tmp_path, num_server_rounds=rounds, checkpoint_every=1, round_timeout=120.0, run_name="resumed")
    first = federation.run(config)
    federation.wait_for(first, rf"round 2/{rounds}:")
    assert federation.flwr("stop", first, "t").returncode == 0
    assert federation.wait_until_finished(first) == "finished:stopped"
    second = federation.run(config + " resume=true")
    assert federation.wait_until_finished(second) == "finished:completed", federation.diagnosis(second)
    resumed_after = int(re.search(r"resume: continuing after round (\d+)", federation.log(second)).group(1))
    assert 2 <= resumed_after < rounds
    history = pd.read_csv(tmp_path / "results" / "resumed.csv")
    assert list(history["round"]) == list(range(1, rounds + 1))
    reference = run_inprocess(RunConfig(**SETTINGS, num_server_rounds=rounds, results_dir=str(tmp_path / "reference")))
    assert np.allclose(history["test-loss"], reference["test-loss"], rtol=1e-5)
