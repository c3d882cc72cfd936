"""The simulation's message lookup returns what Flower's own does, message for message."""

import threading
import time
from queue import Empty, Queue
from types import SimpleNamespace

import pytest
from flwr.app import Message, RecordDict
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

from benchmarks.simulation import simulation_linkstate
from strategies import flower_linkstate


def _state_with_messages(num_nodes: int = 5, expiring: bool = True):
    """A state as the simulation builds it: nodes, a run, and requests pushed through the grid.

    Nodes get 0, 1 or 2 requests; some requests expire before anyone asks (if ``expiring``)."""
    state, nodes, grid = simulation_linkstate(num_nodes)
    messages = []
    for i, node in enumerate(nodes):
        for j in range(i % 3):
            ttl = 0.05 if expiring and (i + j) % 4 == 1 else 3600
            messages.append(Message(RecordDict(), node, "train", ttl=ttl, group_id=f"{i}-{j}"))
    grid.push_messages(messages)
    return state, nodes


def _lookups(get_message_ins):
    state, nodes = _state_with_messages()
    time.sleep(0.1)  # the short-lived requests expire
    asked = []
    for limit in (1, None, 1):
        for index, node in enumerate([*nodes, 999_999]):  # node ids are random: compare by position
            found = get_message_ins(state, node, limit)
            asked.append((index, limit, [m.metadata.group_id for m in found], [m.metadata.delivered_at != "" for m in found]))
    return asked, len(state.message_ins_store)


def test_same_messages_as_flowers_lookup_in_the_same_order():
    ours, ours_left = _lookups(flower_linkstate.get_message_ins)
    flowers, flowers_left = _lookups(flower_linkstate.ORIGINAL_GET_MESSAGE_INS)
    assert ours == flowers
    assert ours_left == flowers_left  # expired requests are purged once every node has asked
    assert any(groups for _, _, groups, _ in ours), "the fixture must deliver something"
    assert any(len(groups) == 0 for index, _, groups, _ in ours if index < 5)


def test_bad_limit_is_refused_like_flowers():
    state, nodes = _state_with_messages(2)
    with pytest.raises(AssertionError):
        flower_linkstate.get_message_ins(state, nodes[0], 0)


@pytest.fixture
def flowers_engine(monkeypatch):
    """Flower's own lookup, stores and engine loop, restored after the test whatever it installs."""
    monkeypatch.setattr(InMemoryLinkState, "get_message_ins", flower_linkstate.ORIGINAL_GET_MESSAGE_INS)
    monkeypatch.setattr(InMemoryLinkState, "store_message_ins", flower_linkstate.ORIGINAL_STORE_MESSAGE_INS)
    monkeypatch.setattr(InMemoryLinkState, "store_message_res", flower_linkstate.ORIGINAL_STORE_MESSAGE_RES)
    monkeypatch.setattr(vce_api, "add_messages_to_queue", flower_linkstate.ORIGINAL_ADD_MESSAGES_TO_QUEUE)
    monkeypatch.delenv(flower_linkstate.KEEP_FLOWERS_ENV, raising=False)
    monkeypatch.delenv(flower_linkstate.KEEP_FLOWERS_POLLING_ENV, raising=False)


def test_install_replaces_the_lookup_only_for_checked_versions(monkeypatch, flowers_engine):
    monkeypatch.delenv(flower_linkstate.KEEP_FLOWERS_ENV, raising=False)
    monkeypatch.setattr(flower_linkstate.flwr, "__version__", "0.0.0")
    assert not flower_linkstate.install()
    assert InMemoryLinkState.get_message_ins is flower_linkstate.ORIGINAL_GET_MESSAGE_INS
    monkeypatch.setattr(flower_linkstate.flwr, "__version__", flower_linkstate.CHECKED_FLWR_VERSIONS[0])
    assert flower_linkstate.install()
    assert InMemoryLinkState.get_message_ins is flower_linkstate.get_message_ins


def test_the_environment_can_keep_flowers_lookup(monkeypatch, flowers_engine):
    monkeypatch.setenv(flower_linkstate.KEEP_FLOWERS_ENV, "1")
    assert not flower_linkstate.install()
    assert InMemoryLinkState.get_message_ins is flower_linkstate.ORIGINAL_GET_MESSAGE_INS
    assert vce_api.add_messages_to_queue is flower_linkstate.ORIGINAL_ADD_MESSAGES_TO_QUEUE


def test_the_environment_can_keep_flowers_polls(monkeypatch, flowers_engine):
    monkeypatch.setenv(flower_linkstate.KEEP_FLOWERS_POLLING_ENV, "1")
    assert flower_linkstate.install()  # the lookup alone
    assert InMemoryLinkState.get_message_ins is flower_linkstate.get_message_ins
    assert vce_api.add_messages_to_queue is flower_linkstate.ORIGINAL_ADD_MESSAGES_TO_QUEUE
    assert not flower_linkstate.prompt_engine_installed()


def _engine_loop(loop, state, nodes):
    """``loop`` running as the engine runs it; returns (queue, stop)."""
    queue: Queue = Queue()
    stop = threading.Event()
    mapping = {node: index for index, node in enumerate(nodes)}
    threading.Thread(target=loop, args=(state, queue, mapping, stop), daemon=True).start()
    return queue, stop


def _drain(queue, expected, timeout=30.0):
    out = [queue.get(timeout=timeout) for _ in range(expected)]
    with pytest.raises(Empty):
        queue.get(timeout=0.3)  # nothing handed out twice
    return out


def test_the_woken_sweep_queues_what_flowers_loop_queues(flowers_engine):
    def queued(loop):
        state, nodes = _state_with_messages(7, expiring=False)  # nodes with 0, 1 and 2 requests
        waiting = sum(1 for m in state.message_ins_store.values())
        queue, stop = _engine_loop(loop, state, nodes)
        out = _drain(queue, waiting)
        stop.set()
        return sorted((nodes.index(m.metadata.dst_node_id), m.metadata.group_id) for m in out)

    flower_linkstate.install()
    ours = queued(flower_linkstate.add_messages_to_queue)
    flowers = queued(flower_linkstate.ORIGINAL_ADD_MESSAGES_TO_QUEUE)
    assert ours == flowers and len(ours) >= 5


def test_a_stored_request_wakes_the_sweep(monkeypatch, flowers_engine):
    flower_linkstate.install()
    monkeypatch.setattr(flower_linkstate, "SWEEP_SECONDS", 3600.0)  # only a store can wake it
    state, nodes, grid = simulation_linkstate(3)
    queue, stop = _engine_loop(flower_linkstate.add_messages_to_queue, state, nodes)
    for round_ in range(3):  # the loop is asleep between rounds
        time.sleep(0.05)
        grid.push_messages([Message(RecordDict(), node, "train", group_id=str(round_)) for node in nodes[:2]])
        assert sorted(m.metadata.group_id for m in _drain(queue, 2)) == [str(round_)] * 2
    stop.set()
    flower_linkstate.MESSAGES_STORED.set()


def test_install_joins_an_engine_loop_that_already_runs(monkeypatch, flowers_engine):
    monkeypatch.setattr(flower_linkstate, "SWEEP_SECONDS", 3600.0)
    monkeypatch.setattr(flower_linkstate, "_attached", set())
    state, nodes, grid = simulation_linkstate(4)
    monkeypatch.setattr(InMemoryLinkState, "get_message_ins", flower_linkstate.get_message_ins)
    # Flower's own loop, started before the ServerApp installs anything
    queue, stop = _engine_loop(flower_linkstate.ORIGINAL_ADD_MESSAGES_TO_QUEUE, state, nodes)
    time.sleep(0.05)
    assert flower_linkstate.install_prompt_engine()
    assert any(t.name == "fl-dp-sweep" for t in threading.enumerate())
    for round_ in range(3):
        grid.push_messages([Message(RecordDict(), node, "train", group_id=str(round_)) for node in nodes])
        # both loops sweep the same state: each request is handed out once
        assert sorted(m.metadata.dst_node_id for m in _drain(queue, len(nodes))) == sorted(nodes)
    stop.set()
    flower_linkstate.MESSAGES_STORED.set()


def test_a_lookup_validates_only_the_messages_addressed_to_the_asking_node(monkeypatch):
    state, nodes = _state_with_messages(6)
    checked = []
    original = InMemoryLinkState._check_stored_messages

    def check(self, ids, run_id=None):
        checked.extend(ids)
        original(self, ids, run_id)

    monkeypatch.setattr(InMemoryLinkState, "_check_stored_messages", check)
    addressed = {n: [i for i, m in state.message_ins_store.items() if m.metadata.dst_node_id == n] for n in nodes}
    for node in nodes:
        checked.clear()
        flower_linkstate.get_message_ins(state, node, None)
        assert checked == addressed[node]  # Flower's own lookup validates every stored message here


def test_the_destination_index_follows_every_store_and_delete():
    def message(node, tag):
        return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, tag=tag))

    store = flower_linkstate.MessagesByDestination({"a": message(1, "a"), "b": message(2, "b")})
    store["c"] = message(1, "c")
    store["b"] = message(2, "b2")  # replaced in place: keeps its position, as a dict does
    assert list(store) == ["a", "b", "c"] and store["b"].metadata.tag == "b2"
    assert store.by_destination == {1: {"a": None, "c": None}, 2: {"b": None}}
    del store["a"]
    del store["b"]
    assert store.by_destination == {1: {"c": None}} and list(store) == ["c"]
    with pytest.raises(TypeError):
        store.pop("c")
    with pytest.raises(TypeError):
        store.update({"d": message(3, "d")})
    assert store.by_destination == {1: {"c": None}}
