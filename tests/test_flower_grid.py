"""The ServerApp's prompt Grid returns what Flower's HttpGrid.send_and_receive returns, reply for reply."""

import time
from types import SimpleNamespace

import pytest
from flwr.superlink.grid import HttpGrid, http_grid
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

from flower_fakes import FakeGrid
from strategies import flower_grid


class StagedGrid:
    """Replies that become available over several pulls; records every pull."""

    def __init__(self, stages, pushed=("a", "b", "c")):
        self.stages, self.pushed, self.pulls = [list(s) for s in stages], list(pushed), []
        self.node_ids = [1, 2]

    def push_messages(self, messages):
        list(messages)
        return list(self.pushed)

    def pull_messages(self, message_ids):
        self.pulls.append(set(message_ids))
        stage = self.stages.pop(0) if self.stages else []
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m), name=f"reply-{m}") for m in stage if m in message_ids
        ]

    def get_node_ids(self):
        return self.node_ids


def _names(replies):
    return [r.name for r in replies]


@pytest.mark.parametrize(
    "stages, timeout",
    [
        ([["a"], [], ["b", "c"]], None),  # all replies, in three pulls
        ([["a", "b", "c"]], 10.0),  # all at once
        ([["a"], ["b"], [], [], []], 0.05),  # one never comes: the timeout ends the wait
        ([["a", "a"], ["b", "c"]], 10.0),  # a duplicate reply is returned as Flower returns it
    ],
)
def test_prompt_grid_returns_what_flowers_http_grid_returns(monkeypatch, stages, timeout):
    clock = {"t": 0.0}
    monkeypatch.setattr(flower_grid.time, "time", lambda: clock["t"])
    monkeypatch.setattr(flower_grid.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    ours = StagedGrid(stages)
    replies = flower_grid.PromptGrid(ours).send_and_receive(["m"] * 3, timeout=timeout)

    monkeypatch.setattr(http_grid.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    clock["t"] = 0.0
    flowers = StagedGrid(stages)
    expected = HttpGrid.send_and_receive(flowers, ["m"] * 3, timeout=timeout)  # type: ignore[arg-type]

    # the same replies, and where the timeout ended the wait, those of one last pull after it
    assert _names(replies)[: len(expected)] == _names(expected)
    assert len(replies) == len(expected) or timeout == 0.05
    # Flower waits 3 s between pulls, so within a timeout it may pull fewer times; never more
    assert len(ours.pulls) >= len(flowers.pulls) and ours.pulls[: len(flowers.pulls)] == flowers.pulls


def test_prompt_grid_waits_a_tenth_of_flowers_wait(monkeypatch):
    waits = []
    monkeypatch.setattr(flower_grid.time, "sleep", waits.append)
    flower_grid.PromptGrid(StagedGrid([[], [], ["a", "b", "c"]])).send_and_receive([], timeout=None)
    assert waits == [flower_grid.PULL_SECONDS] * 2


def test_prompt_grid_passes_everything_else_through():
    assert flower_grid.PromptGrid(StagedGrid([])).get_node_ids() == [1, 2]


def test_prompt_wraps_only_a_deployment_grid(monkeypatch):
    other = StagedGrid([])
    assert flower_grid.prompt(other) is other  # the simulation's InMemoryGrid, a test's fake
    deployment = object.__new__(HttpGrid)
    monkeypatch.setattr(http_grid, "pull_objects", flower_grid.ORIGINAL_PULL_OBJECTS)
    assert isinstance(flower_grid.prompt(deployment), flower_grid.PromptGrid)
    monkeypatch.setenv(flower_grid.KEEP_FLOWERS_ENV, "1")
    assert flower_grid.prompt(deployment) is deployment


def test_install_shortens_only_the_retries_of_reply_parts_and_only_on_a_checked_version(monkeypatch):
    monkeypatch.setattr(http_grid, "pull_objects", flower_grid.ORIGINAL_PULL_OBJECTS)
    assert not flower_grid.install("1.41.0")
    assert http_grid.pull_objects is flower_grid.ORIGINAL_PULL_OBJECTS
    assert flower_grid.install(flower_grid.CHECKED_FLWR_VERSIONS[0])
    assert http_grid.pull_objects is flower_grid.pull_objects_within_the_round
    # the same objects come back: a part missing on the first tries is pulled again soon
    tries = {"x": 0}

    def pull(object_id):
        tries[object_id] += 1
        if tries[object_id] < 3:
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert http_grid.pull_objects(["x"], pull) == {"x": b"content"} and tries["x"] == 3


def test_a_reply_part_that_never_comes_is_waited_for_only_until_the_rounds_timeout(monkeypatch):
    """Its node died mid-upload: without a bound, Flower retries for up to 2 hours (500 tries)."""
    seen = []
    monkeypatch.setattr(flower_grid, "ORIGINAL_PULL_OBJECTS", lambda ids, fn, **kw: seen.append(kw) or {})
    monkeypatch.setattr(flower_grid.time, "time", lambda: 1000.0)
    for deadline in (None, 1100.0, 1000.5, 900.0):
        token = flower_grid._ROUND_DEADLINE.set(deadline)
        try:
            flower_grid.pull_objects_within_the_round(["x"], None)
        finally:
            flower_grid._ROUND_DEADLINE.reset(token)
    # outside a round Flower's own limits; inside, the time the round has left, at least the floor
    assert "max_time" not in seen[0]
    assert [kw["max_time"] for kw in seen[1:]] == [100.0, flower_grid.LAST_PULL_SECONDS, flower_grid.LAST_PULL_SECONDS]
    assert all(kw["initial_backoff"] == flower_grid.PULL_SECONDS and kw["backoff_cap"] == 1.0 for kw in seen)


def test_flowers_pull_gives_up_on_a_part_that_never_comes_at_that_bound(monkeypatch):
    monkeypatch.setattr(flower_grid, "LAST_PULL_SECONDS", 0.3)
    tries = []

    def never(object_id):
        tries.append(object_id)
        raise ObjectUnavailableError(object_id)

    token = flower_grid._ROUND_DEADLINE.set(time.time())
    try:
        with pytest.raises(ObjectPullError):  # which HttpGrid turns into an error reply
            flower_grid.pull_objects_within_the_round(["x"], never)
    finally:
        flower_grid._ROUND_DEADLINE.reset(token)
    assert 1 < len(tries) < 500  # retried, and given up long before Flower's 500 tries


class BlockedPullGrid(StagedGrid):
    """The first pull is held up past the timeout by a reply whose parts never come (its node died
    mid-upload): it returns that reply as Flower's error reply; the others are stored meanwhile."""

    def __init__(self, clock, hold_seconds):
        super().__init__([["a"], ["b", "c"]])
        self.clock, self.hold_seconds = clock, hold_seconds

    def pull_messages(self, message_ids):
        if len(self.pulls) == 0:
            self.clock["t"] += self.hold_seconds
        return super().pull_messages(message_ids)


def test_replies_stored_while_a_pull_outlasted_the_timeout_are_not_lost(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(flower_grid.time, "time", lambda: clock["t"])
    monkeypatch.setattr(flower_grid.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    grid = BlockedPullGrid(clock, hold_seconds=180.0)
    replies = flower_grid.PromptGrid(grid).send_and_receive(["m"] * 3, timeout=120.0)
    assert _names(replies) == ["reply-a", "reply-b", "reply-c"]
    assert grid.pulls == [{"a", "b", "c"}, {"b", "c"}]
    # Flower's own loop returns only the held-up reply: b's and c's clients sent theirs for nothing
    monkeypatch.setattr(http_grid.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    monkeypatch.setattr(http_grid.time, "time", lambda: clock["t"])
    clock["t"] = 0.0
    flowers = BlockedPullGrid(clock, hold_seconds=180.0)
    assert _names(HttpGrid.send_and_receive(flowers, ["m"] * 3, timeout=120.0)) == ["reply-a"]  # type: ignore[arg-type]


class ArrivingGrid(StagedGrid):
    """An in-memory Grid whose replies are stored while the Grid waits: each wait stores the next
    batch (noted in ``stored``, as the LinkState's store does) unless the batch is ``silent`` (a reply
    the LinkState makes itself, such as the error of an expired request, is never stored)."""

    def __init__(self, arrivals, stored, clock, silent=()):
        super().__init__([])
        self.arrivals, self.stored, self.clock, self.silent, self.available = list(arrivals), stored, clock, silent, []
        self.log = []

    def wait(self, seconds):
        self.log.append("wait")
        self.clock["t"] += 0.01
        if self.arrivals:
            batch = self.arrivals.pop(0)
            self.available += batch
            for request in batch:
                if request not in self.silent:
                    self.stored.add(request)
        return True

    def pull_messages(self, message_ids):
        self.pulls.append(set(message_ids))
        found = [m for m in self.available if m in message_ids]
        self.available = [m for m in self.available if m not in found]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m), name=f"reply-{m}") for m in found]


def _arriving(monkeypatch, arrivals, silent=()):
    from strategies.flower_linkstate import StoredReplies

    clock = {"t": 0.0}
    monkeypatch.setattr(flower_grid.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(flower_grid.time, "sleep", lambda s: pytest.fail("must wait on the event, not sleep"))
    stored = StoredReplies()
    grid = ArrivingGrid(arrivals, stored, clock, silent)
    monkeypatch.setattr(stored.event, "wait", grid.wait)
    return grid, stored


def test_an_in_memory_grid_pulls_just_the_requests_answered_when_a_reply_is_stored(monkeypatch):
    grid, stored = _arriving(monkeypatch, [["a"], ["b", "c"]])
    replies = flower_grid.PromptGrid(grid, 0.1, stored).send_and_receive(["m"] * 3)
    assert _names(replies) == ["reply-a", "reply-b", "reply-c"]
    # every pending request once, then only those a stored reply answers
    assert grid.pulls == [{"a", "b", "c"}, {"a"}, {"b", "c"}]
    assert stored.take({"a", "b", "c"}) == set()


def test_a_reply_that_was_never_stored_is_pulled_within_the_pull_interval(monkeypatch):
    """Flower's LinkState answers an expired request itself; every 0.1 s a pull names every pending request."""
    grid, stored = _arriving(monkeypatch, [["a", "b"], ["c"]], silent=("c",))
    replies = flower_grid.PromptGrid(grid, 0.1, stored).send_and_receive(["m"] * 3)
    assert _names(replies) == ["reply-a", "reply-b", "reply-c"]
    assert grid.pulls[:2] == [{"a", "b", "c"}, {"a", "b"}]
    assert grid.pulls[-1] == {"c"} and len(grid.log) >= 10  # the full pull came after 0.1 s of waits


def test_answered_requests_are_forgotten_when_the_call_ends(monkeypatch):
    """A reply pulled by a full pull leaves its request noted as answered; the call's end drops it."""
    grid, stored = _arriving(monkeypatch, [["a", "c"]])
    stored.expect({"b"})
    stored.add("b")  # stored before the first pull, which names every request and takes it
    grid.available = ["b"]
    replies = flower_grid.PromptGrid(grid, 0.1, stored).send_and_receive(["m"] * 3)
    assert _names(replies) == ["reply-b", "reply-a", "reply-c"]
    assert grid.pulls == [{"a", "b", "c"}, {"a", "c"}]
    assert stored.take({"a", "b", "c"}) == set()
    stored.add("a")  # a late reply to a request no longer awaited is not kept
    assert stored.take({"a"}) == set()


def test_prompt_wraps_the_simulations_grid_only_where_stores_are_signalled(monkeypatch):
    from flwr.superlink.grid import InMemoryGrid

    from strategies import flower_linkstate

    grid = object.__new__(InMemoryGrid)
    grid.pull_interval = 0.1
    monkeypatch.delenv(flower_grid.KEEP_FLOWERS_ENV, raising=False)
    monkeypatch.setattr(flower_linkstate, "prompt_engine_installed", lambda: False)
    assert flower_grid.prompt(grid) is grid
    monkeypatch.setattr(flower_linkstate, "prompt_engine_installed", lambda: True)
    wrapped = flower_grid.prompt(grid)
    assert isinstance(wrapped, flower_grid.PromptGrid) and wrapped.stored is flower_linkstate.REPLIES
    monkeypatch.setenv(flower_grid.KEEP_FLOWERS_ENV, "1")
    assert flower_grid.prompt(grid) is grid


def test_a_simulations_nodes_come_in_registration_order_the_same_in_every_run():
    """The engine registers partition 0, 1, ... in turn under new random node ids each run: the order
    the strategy samples from is the partitions' (sorting the ids would shuffle it run to run)."""
    from benchmarks.simulation import simulation_linkstate

    for _ in range(3):
        state, _, grid = simulation_linkstate(12)
        registered = list(state.nodes)  # the i-th registered is partition i
        assert registered != sorted(registered)  # random ids: sorting them would shuffle the partitions
        assert flower_grid.connected_in_order(grid) == registered
        assert flower_grid.connected_in_order(flower_grid.PromptGrid(grid)) == registered
    assert flower_grid.connected_in_order(FakeGrid([30, 10, 20])) == [10, 20, 30]  # a deployment's Grid: sorted
