"""The simulation's message lookup returns what Flower's own does, message for message."""

import time
from types import SimpleNamespace

import pytest
from flwr.app import Message, RecordDict
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

from benchmarks.simulation import simulation_linkstate
from strategies import flower_linkstate


def _state_with_messages(num_nodes: int = 5):
    """A state as the simulation builds it: nodes, a run, and requests pushed through the grid.

    Nodes get 0, 1 or 2 requests; some requests expire before anyone asks."""
    state, nodes, grid = simulation_linkstate(num_nodes)
    messages = []
    for i, node in enumerate(nodes):
        for j in range(i % 3):
            ttl = 0.05 if (i + j) % 4 == 1 else 3600
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


def test_install_replaces_the_lookup_only_for_checked_versions(monkeypatch):
    monkeypatch.setattr(InMemoryLinkState, "get_message_ins", flower_linkstate.ORIGINAL_GET_MESSAGE_INS)
    monkeypatch.delenv(flower_linkstate.KEEP_FLOWERS_ENV, raising=False)
    monkeypatch.setattr(flower_linkstate.flwr, "__version__", "0.0.0")
    assert not flower_linkstate.install()
    assert InMemoryLinkState.get_message_ins is flower_linkstate.ORIGINAL_GET_MESSAGE_INS
    monkeypatch.setattr(flower_linkstate.flwr, "__version__", flower_linkstate.CHECKED_FLWR_VERSIONS[0])
    assert flower_linkstate.install()
    assert InMemoryLinkState.get_message_ins is flower_linkstate.get_message_ins


def test_the_environment_can_keep_flowers_lookup(monkeypatch):
    monkeypatch.setattr(InMemoryLinkState, "get_message_ins", flower_linkstate.ORIGINAL_GET_MESSAGE_INS)
    monkeypatch.setenv(flower_linkstate.KEEP_FLOWERS_ENV, "1")
    assert not flower_linkstate.install()
    assert InMemoryLinkState.get_message_ins is flower_linkstate.ORIGINAL_GET_MESSAGE_INS


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
