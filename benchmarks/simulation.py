"""The same training work done by a plain single-process loop and by `flwr run` with Ray.

alpha-NormEC, the CNN on Fashion-MNIST, one minibatch gradient of 32 per client and round, every
client in every round, for 10, 100 and 1000 virtual clients. Both paths run the same ClientCore /
ServerCore code; the Flower path adds the SuperLink, Ray actors (one CPU each) and message
serialisation. Reported side by side in one run: total wall time, per-round time after start-up
(median of rounds 2..R), their ratio, and peak RAM: the loop's process's peak RSS against the peak
of the Flower/Ray processes' summed RSS, and the peaks of summed PSS on both sides (which count a
page that several processes share once, not once per process). The plain loop runs before and
after each Flower run and the ratio uses the mean of the two, so that a machine whose speed drifts
(shared hosts) biases neither side; ``--repeats N`` runs N such triples per client count and
summarises the per-round ratio by its median, min and max.

Also what keeping the client's state (g_i) in ``context.state`` costs per message: its
serialisation, and the Ray round trip of one client message (the request and Context in, the
reply and Context back) with and without the state, under Ray's default inline limit (100 KiB;
larger replies go through the object store) and the 1 MiB that scripts/simulate.sh sets.

    python -m benchmarks.simulation                 # about 14 minutes on 2 cores
    python -m benchmarks.simulation --clients 100 --repeats 3   # three triples, about 6 minutes
    FL_DP_CLIENT_GPUS=0.1 python -m benchmarks.simulation --clients 100   # GPU variant: Ray actors given 0.1 GPU each
    python -m benchmarks.simulation --clients 100 --devices cpu cuda      # clients per second on the CPU and on CUDA
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, markdown_table, positive_int

ROOT = Path(__file__).parents[1]
ROUNDS = 8
# the goal: the Flower path within 1.5x of the plain loop per round after start-up
GOAL = 1.5


def paired_device() -> str:
    """The device both paths of a paired run compute on: the GPU only where FL_DP_CLIENT_GPUS gives
    the Flower path's clients one (else the plain loop alone would run on it)."""
    return "auto" if float(os.environ.get("FL_DP_CLIENT_GPUS") or 0) > 0 else "cpu"


def settings(num_clients: int, device: str | None = None, rounds: int = ROUNDS) -> dict:
    device = device or paired_device()
    return dict(
        strategy="alpha-normec", dataset="fashion-mnist", model="cnn", batch_size=32, server_lr=0.5,
        num_server_rounds=rounds, num_clients=num_clients, clients_per_round=num_clients, eval_samples=1000, device=device,
    )


def plain_loop(num_clients: int, device: str | None = None, rounds: int = ROUNDS) -> dict:
    """Run in a fresh process so that its peak RSS is its own (its PSS is sampled as Flower's is)."""
    code = (
        "import json, resource, time, torch\n"
        "from fl_dp.config import RunConfig\n"
        "from fl_dp.inprocess import run_inprocess\n"
        f"cfg = RunConfig(**{settings(num_clients, device, rounds)!r}, results_dir='unused')\n"
        "t = time.perf_counter(); h = run_inprocess(cfg); total = time.perf_counter() - t\n"
        "print(json.dumps({'total': total, 'rounds': h['round-seconds'].tolist(), 'accuracy': float(h['test-accuracy'].iloc[-1]),"
        " 'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with PeakMemory(lambda: [process.pid]) as memory:
        out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(err[-4000:])
    return {**json.loads(out.strip().splitlines()[-1]), "peak_pss_mib": memory.peak_pss_mib}


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """(summed RSS, summed PSS) of ``pids`` in MiB. RSS counts a page shared by k processes k
    times (torch's libraries in every Python process of Ray); PSS counts 1/k of it in each, so
    their sum is what the processes take together. Processes gone meanwhile count 0."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


class PeakMemory:
    """Samples ``memory_mib(pids())`` every ``interval`` seconds while in use; keeps the peaks."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.5) -> None:
        self.pids, self.interval = pids, interval
        self.peak_rss_mib = self.peak_pss_mib = 0.0
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            rss, pss = memory_mib(self.pids())
            self.peak_rss_mib, self.peak_pss_mib = max(self.peak_rss_mib, rss), max(self.peak_pss_mib, pss)
            self._done.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._sampler.join()


def _flower_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    keys = ("flwr", "flower-", "ray::", "raylet", "gcs_server", "ray/")
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if any(k in line for k in keys)]


def simulate_sh(num_clients: int, run_settings: dict, env_extra: dict[str, str] | None = None) -> tuple[pd.DataFrame, float]:
    """One `scripts/simulate.sh` run of ``run_settings`` on ``num_clients`` virtual SuperNodes, in a
    throw-away FLWR_HOME / RAY_TMPDIR, with ``env_extra`` in its environment: (per-round metrics,
    wall seconds)."""
    with tempfile.TemporaryDirectory(prefix="flsim-", dir="/tmp") as tmp:
        run_config = " ".join(
            f"{k.replace('_', '-')}='{v}'" if isinstance(v, str) else f"{k.replace('_', '-')}={v}" for k, v in run_settings.items()
        )
        run_config += f" run-name='sim' results-dir='{tmp}'"
        env = {**os.environ, "FLWR_HOME": f"{tmp}/home", "RAY_TMPDIR": f"{tmp}/r", "FL_DP_VENV": str(Path(sys.executable).parent.parent),
               **(env_extra or {})}
        started = time.perf_counter()
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "simulate.sh"), str(num_clients), "--run-config", run_config],
            env=env, capture_output=True, text=True, cwd=ROOT,
        )
        total = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError((result.stdout + result.stderr)[-4000:])
        return pd.read_csv(Path(tmp) / "sim.csv"), total


FLOWER = "flwr run + Ray"
#: the same run with the simulation engine's and InMemoryGrid's own 0.1 s polls (``--own-polling``)
FLOWER_OWN_POLLS = "flwr run + Ray, Flower's 0.1 s polls"


def flower_run(num_clients: int, env_extra: dict[str, str] | None = None) -> dict:
    with PeakMemory(_flower_pids) as memory:
        history, total = simulate_sh(num_clients, settings(num_clients), env_extra)
    return {"total": total, "rounds": history["round-seconds"].tolist(), "accuracy": float(history["test-accuracy"].iloc[-1]),
            "peak_mib": memory.peak_rss_mib, "peak_pss_mib": memory.peak_pss_mib}


def state_cost() -> pd.DataFrame:
    """Serialising an ArrayRecord of d float32 (what context.state adds per message, each way)."""
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.common.serde import recorddict_to_proto

    rows = []
    for name, dim in (("cnn", 18_474), ("resnet20", 272_474)):
        record = RecordDict({"state": ArrayRecord({"g": Array(np.random.rand(dim).astype(np.float32))})})
        started = time.perf_counter()
        for _ in range(20):
            size = len(recorddict_to_proto(record).SerializeToString())
        rows.append({"model": name, "d": dim, "state bytes": size, "serialise ms": (time.perf_counter() - started) / 20 * 1000})
    return pd.DataFrame(rows)


RAY_INLINE_LIMITS = {"Ray default (100 KiB)": None, "simulate.sh (1 MiB)": 1 << 20}


def _round_trip_child() -> None:
    """In a fresh process (Ray reads its inline limit at start): ms per actor round trip, as
    Flower's Ray backend does it: (request, Context) in, (cid, reply, Context) back."""
    import ray
    import torch
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from clients.client_app import train as client_train
    from fl_dp.config import RunConfig
    from fl_dp.server import ServerCore
    from strategies.fl_dp_strategy import FlDpStrategy

    class OneNode:
        def get_node_ids(self) -> list[int]:
            return [1]

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    torch.set_num_threads(1)
    cfg = RunConfig(**settings(1), results_dir="unused")
    strategy = FlDpStrategy(ServerCore(cfg))
    request = list(strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), OneNode()))[0]
    request.metadata.__dict__["_message_id"] = "request"
    with_state = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(), run_config=cfg.to_flwr())
    reply = client_train(request, with_state)
    without_state = Context(run_id=1, node_id=1, node_config=with_state.node_config, state=RecordDict(), run_config=cfg.to_flwr())

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)

    @ray.remote(num_cpus=1)
    class Client:
        def __init__(self, reply):
            self.reply = reply

        def run(self, request, cid, context):
            return cid, self.reply, context

    actor = Client.remote(reply)
    result = {}
    for name, context in (("with g_i in context.state", with_state), ("without client state", without_state)):
        for _ in range(20):
            ray.get(actor.run.remote(request, "0", context))
        started = time.perf_counter()
        for _ in range(300):
            ray.get(actor.run.remote(request, "0", context))
        result[name] = (time.perf_counter() - started) / 300 * 1000
    ray.shutdown()
    print(json.dumps(result))


def ray_round_trips() -> pd.DataFrame:
    rows = []
    for name, limit in RAY_INLINE_LIMITS.items():
        env = {k: v for k, v in os.environ.items() if k != "RAY_max_direct_call_object_size"}
        if limit is not None:
            env["RAY_max_direct_call_object_size"] = str(limit)
        with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as tmp:
            env["RAY_TMPDIR"] = tmp
            out = subprocess.run([sys.executable, "-m", "benchmarks.simulation", "--round-trip-child"],
                                 capture_output=True, text=True, check=True, cwd=ROOT, env=env)
        for payload, ms in json.loads(out.stdout.strip().splitlines()[-1]).items():
            rows.append({"inline limit": name, "payload": payload, "ms per round trip": ms})
    return pd.DataFrame(rows)


def device_throughput(num_clients: int, devices: list[str], rounds: int = ROUNDS) -> pd.DataFrame:
    """Clients served per second by the plain loop on each device (each client computes one minibatch
    gradient of the CNN), side by side in one run; a device this machine lacks gets a row saying so."""
    import torch

    rows = []
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            rows.append({"device": device, "clients": num_clients, "s/round after start-up": np.nan, "clients/s": np.nan,
                         "GPU": "none on this machine"})
            continue
        measured = plain_loop(num_clients, device, rounds)
        per_round = float(np.median(measured["rounds"][1:]))
        gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else ""
        rows.append({"device": device, "clients": num_clients, "s/round after start-up": per_round,
                     "clients/s": num_clients / per_round, "GPU": gpu})
    table = pd.DataFrame(rows)
    table["clients/s vs cpu"] = table["clients/s"] / table.loc[table["device"] == "cpu", "clients/s"].mean()
    return table


def paired_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (clients, repeat, Flower variant): the Flower run against the mean of the plain
    loops run just before and after the repeat's Flower runs, so that drift of the host's speed
    biases neither side."""
    rows = []
    for (num_clients, repeat), group in table.groupby(["clients", "repeat"]):
        is_plain = group["path"] == "plain loop"
        if is_plain.sum() != 2 or not 1 <= (~is_plain).sum() <= 2:
            raise ValueError(f"clients={num_clients} repeat={repeat}: expected plain, flower, plain (one or two Flower runs); got {group['path'].tolist()}")
        plain = group[is_plain].mean(numeric_only=True)
        for _, flower in group[~is_plain].iterrows():
            rows.append({"clients": num_clients, "repeat": repeat, "flower path": flower["path"],
                         "total ratio (flower / plain)": flower["total s"] / plain["total s"],
                         "per-round ratio after start-up": flower["s/round after start-up"] / plain["s/round after start-up"],
                         "Flower overhead per client message ms": (flower["s/round after start-up"] - plain["s/round after start-up"]) / num_clients * 1000,
                         "peak RAM ratio": flower["peak RAM MiB"] / plain["peak RAM MiB"],
                         "peak PSS ratio": flower["peak PSS MiB"] / plain["peak PSS MiB"]})
    return pd.DataFrame(rows)


def ratio_summary(ratios: pd.DataFrame, goal: float = GOAL) -> pd.DataFrame:
    """Per client count and Flower variant: median, min and max of the per-round ratio over the repeats."""
    per_round = ratios.groupby(["clients", "flower path"])["per-round ratio after start-up"]
    return pd.DataFrame({
        "repeats": per_round.size(),
        "median per-round ratio": per_round.median(),
        "min": per_round.min(),
        "max": per_round.max(),
        f"repeats within {goal}x": per_round.apply(lambda r: int((r <= goal).sum())),
    }).reset_index()


def simulation_linkstate(num_nodes: int) -> tuple[Any, list[int], Any]:
    """(state, node ids, grid): an in-memory LinkState as the simulation builds it, ``num_nodes``
    registered nodes and one run (id 7), with the SuperLink's task identity set, so that requests
    pushed through the grid land in the state."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.proto.task_pb2 import Task
    from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.federation import NoOpFederationManager
    from flwr.superlink.grid import InMemoryGrid

    # messages are created by the ServerApp, i.e. on the SuperLink node
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 7, 11, SUPERLINK_NODE_ID
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    nodes = sorted(_register_nodes(num_nodes, factory))
    state = factory.state()
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 11, NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[11] = Task(task_id=11, run_id=run.run_id)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    return state, nodes, grid


def linkstate_sweeps(node_counts: tuple[int, ...] = (100, 1000), sweeps: int = 5) -> pd.DataFrame:
    """Seconds one sweep of the simulation engine takes (``get_message_ins(node, limit=1)`` for every
    node, as ``vce_api.add_messages_to_queue`` does every 0.1 s) while each node has one request
    delivered and not yet answered, with Flower's lookup and with ``strategies/flower_linkstate``'s."""
    from flwr.app import Message, RecordDict

    from strategies import flower_linkstate

    lookups = (("flower's own", flower_linkstate.ORIGINAL_GET_MESSAGE_INS), ("fl-dp index", flower_linkstate.get_message_ins))
    rows = []
    for num_nodes in node_counts:
        for lookup_name, lookup in lookups:
            state, nodes, grid = simulation_linkstate(num_nodes)
            grid.push_messages([Message(RecordDict(), node, "train") for node in nodes])
            delivered = sum(len(lookup(state, node, 1)) for node in nodes)  # the first sweep hands them out
            times = []
            for _ in range(sweeps):
                started = time.perf_counter()
                for node in nodes:
                    lookup(state, node, 1)
                times.append(time.perf_counter() - started)
            rows.append({"nodes": num_nodes, "lookup": lookup_name, "delivered": delivered,
                         "sweep ms (median)": 1000 * float(np.median(times))})
    table = pd.DataFrame(rows)
    own = table[table["lookup"] == "flower's own"].set_index("nodes")["sweep ms (median)"]
    table["flower's own / this"] = [own[n] / t for n, t in zip(table["nodes"], table["sweep ms (median)"])]
    return table


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=positive_int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=positive_int, default=1, help="plain / flower / plain triples per client count")
    parser.add_argument("--round-trip-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sweeps-only", action="store_true", help="only the LinkState sweep table (seconds)")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"],
                        help="only the plain loop's clients per second on these devices, side by side (at --clients)")
    parser.add_argument("--own-polling", action="store_true",
                        help="also run Flower with its engine's and Grid's own 0.1 s polls, in each repeat (FL_DP_FLOWER_OWN_POLLING=1)")
    args = parser.parse_args()
    if args.sweeps_only:
        print(markdown_table(linkstate_sweeps()))
        return
    if args.devices:
        out = RESULTS / "simulation"
        out.mkdir(parents=True, exist_ok=True)
        devices = pd.concat([device_throughput(n, args.devices) for n in args.clients], ignore_index=True)
        devices.to_csv(out / "devices.csv", index=False)
        print(markdown_table(devices))
        print(f"written to {out / 'devices.csv'}")
        return
    if args.round_trip_child:
        _round_trip_child()
        return
    rows = []
    for num_clients in args.clients:
        for repeat in range(1, args.repeats + 1):
            paths: list[tuple[str, Any]] = [("plain loop", plain_loop), (FLOWER, flower_run)]
            if args.own_polling:
                own = functools.partial(flower_run, env_extra={"FL_DP_FLOWER_OWN_POLLING": "1"})
                # alternate which Flower variant runs first, so neither always follows the plain loop
                paths.insert(1 + (repeat % 2 == 0), (FLOWER_OWN_POLLS, own))
            for path, run in (*paths, ("plain loop", plain_loop)):
                measured = run(num_clients)
                after_startup = float(np.median(measured["rounds"][1:]))
                rows.append({"clients": num_clients, "repeat": repeat, "path": path, "total s": measured["total"],
                             "s/round after start-up": after_startup, "clients/s": num_clients / after_startup,
                             "round-1 s": measured["rounds"][0],
                             "peak RAM MiB": measured["peak_mib"], "peak PSS MiB": measured["peak_pss_mib"],
                             "final accuracy": measured["accuracy"]})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    ratios = paired_ratios(table)
    summary = ratio_summary(ratios)
    out = RESULTS / "simulation"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    ratios.to_csv(out / "ratios.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    costs = state_cost()
    trips = ray_round_trips()
    trips.to_csv(out / "ray_round_trips.csv", index=False)
    sweeps = linkstate_sweeps()
    sweeps.to_csv(out / "linkstate_sweeps.csv", index=False)
    tables = [markdown_table(t) for t in (table, ratios, summary, costs, trips, sweeps)]
    (out / "table.md").write_text("\n".join(tables))
    for text in tables:
        print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
