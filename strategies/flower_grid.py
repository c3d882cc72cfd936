"""The ServerApp's side of fast deployment rounds: ask the SuperLink for replies every 0.1 s.

Flower 1.42's deployment Grid (``HttpGrid``, ``flwr/superlink/grid/http_grid.py``) waits in two places
that, on a two-node TLS deployment of the CNN, made most of a round:

- ``send_and_receive`` pushes a round's messages, then pulls their replies and sleeps 3 s between
  two pulls. :class:`PromptGrid` runs the same loop (push, pull until every reply is in or
  ``timeout`` has passed) through the Grid's public ``push_messages`` / ``pull_messages`` with a
  wait of :data:`PULL_SECONDS`; everything else goes to the wrapped Grid.
- ``pull_messages`` fetches a reply's parts with ``pull_objects``, whose first retry of a part not
  yet at the SuperLink comes after 1 s. :func:`install` makes those retries start at
  :data:`PULL_SECONDS` (doubling up to 1 s), for the flwr version it was checked against only,
  and logs that it did.
- A reply whose parts never arrive (its SuperNode died mid-upload) holds ``pull_messages`` until
  the SuperLink drops the parts (about 3 min), past the round's timeout; Flower's loop then ends
  without pulling the replies stored meanwhile, and they are lost, though their clients sent them.
  Under :class:`PromptGrid` a reply's parts are waited for only until the round's timeout (at
  least :data:`LAST_PULL_SECONDS`), and one last pull after the timeout takes every reply already
  at the SuperLink.

In a simulation, ``InMemoryGrid.send_and_receive`` sleeps its ``pull_interval`` (0.1 s) between two
pulls; there :class:`PromptGrid` pulls again as soon as the in-memory LinkState has stored a reply
(``strategies.flower_linkstate.REPLIES``), and at least every ``pull_interval``. A pull on a store
asks only for the requests answered since the last pull: the LinkState validates every request a
pull names, so pulling all pending ones on each of a round's N stores made O(N * N) validations a
round; every ``pull_interval`` a pull names all pending requests, as Flower's does, so that expired
requests and lost nodes still return Flower's error replies.

The messages and replies are Flower's; only how soon, and for how long, the ServerApp asks changes. Upstream
change that would remove this module: a ``pull_interval`` of ``HttpGrid`` as ``InMemoryGrid`` has,
used for both waits. The SuperNode's own waits are shortened by ``scripts/flower_runtime.py``.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import time
from collections.abc import Iterable
from typing import Any

import flwr
from flwr.app import Message
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.serverapp import Grid
from flwr.superlink.grid import HttpGrid, InMemoryGrid, http_grid

from strategies import flower_linkstate
from strategies.flower_linkstate import StoredReplies

log = logging.getLogger("fl_dp")

PULL_SECONDS = 0.1
#: how long the last pull after a round's timeout waits for a reply's missing parts
LAST_PULL_SECONDS = 2.0
CHECKED_FLWR_VERSIONS = ("1.42.0",)
#: set to 1 to keep the Grids' own waits (to measure against them)
KEEP_FLOWERS_ENV = flower_linkstate.KEEP_FLOWERS_POLLING_ENV
ORIGINAL_PULL_OBJECTS = http_grid.pull_objects
#: when the running ``PromptGrid.send_and_receive`` stops waiting (``time.time()``; None: never)
_ROUND_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("fl_dp_round_deadline", default=None)


class PromptGrid:
    """``grid`` with a ``send_and_receive`` that pulls replies every ``pull_seconds``, or, given
    ``stored``, as soon as a reply is stored, naming only the requests answered since the last
    pull (and every pending request at least every ``pull_seconds``)."""

    def __init__(self, grid: Grid, pull_seconds: float = PULL_SECONDS, stored: StoredReplies | None = None) -> None:
        self.grid, self.pull_seconds, self.stored = grid, pull_seconds, stored

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self.grid.push_messages(messages))
        asked = set(pending)
        if self.stored is not None:
            self.stored.expect(asked)  # a reply stored before this is found by the first pull, which names all
        end = time.time() + (timeout or 0.0)
        replies: list[Message] = []
        deadline = _ROUND_DEADLINE.set(None if timeout is None else end)
        next_full_pull = time.monotonic()
        try:
            while pending and (timeout is None or time.time() < end):
                wanted = pending
                if self.stored is not None:
                    self.stored.event.clear()  # before the pull: a reply stored after it wakes the next one
                    if time.monotonic() < next_full_pull:
                        wanted = self.stored.take(pending)
                    else:
                        next_full_pull = time.monotonic() + self.pull_seconds
                if wanted:
                    pending -= self._pull(wanted, replies)
                if pending:
                    self._wait()
            if pending:
                # a pull held up by parts that never came may have outlasted the timeout: the
                # replies stored meanwhile are still at the SuperLink
                self._pull(pending, replies)
        finally:
            _ROUND_DEADLINE.reset(deadline)
            if self.stored is not None:
                self.stored.forget(asked)
        return replies

    def _pull(self, pending: set[str], replies: list[Message]) -> set[str]:
        """Pull the replies to ``pending`` into ``replies``; the ids they answer."""
        pulled = list(self.grid.pull_messages(pending))
        replies.extend(pulled)
        return {m.metadata.reply_to_message_id for m in pulled}

    def _wait(self) -> None:
        if self.stored is None:
            time.sleep(self.pull_seconds)
        else:
            self.stored.event.wait(self.pull_seconds)


def pull_objects_within_the_round(object_ids: list[str], pull_object_fn: Any, **kwargs: Any) -> dict[str, bytes]:
    """Flower's ``pull_objects``, retrying a missing part after :data:`PULL_SECONDS` (doubling up
    to 1 s), for no longer than the running round's timeout leaves (at least
    :data:`LAST_PULL_SECONDS`); then Flower's HttpGrid turns the reply into an error reply."""
    deadline = _ROUND_DEADLINE.get()
    if deadline is not None:
        left = max(deadline - time.time(), LAST_PULL_SECONDS)
        kwargs["max_time"] = min(kwargs.get("max_time") or math.inf, left)
    kwargs.setdefault("initial_backoff", PULL_SECONDS)
    kwargs.setdefault("backoff_cap", 1.0)
    return ORIGINAL_PULL_OBJECTS(object_ids, pull_object_fn, **kwargs)


def install(version: str = flwr.__version__) -> bool:
    """:func:`pull_objects_within_the_round` in this process's HttpGrids; False (nothing changed)
    on a flwr version this was not checked against."""
    if version not in CHECKED_FLWR_VERSIONS:
        log.info("flwr %s: keeping HttpGrid's own retries of reply parts", version)
        return False
    http_grid.pull_objects = pull_objects_within_the_round
    log.info("flwr %s: HttpGrid retries reply parts after %.2f s, until the round's timeout", version, PULL_SECONDS)
    return True


def is_simulation(grid: Grid) -> bool:
    """Whether ``grid`` (or the Grid a :class:`PromptGrid` wraps) is the simulation engine's."""
    return isinstance(grid.grid if isinstance(grid, PromptGrid) else grid, InMemoryGrid)


def connected_in_order(grid: Grid) -> list[int]:
    """The connected SuperNodes, in an order that is the same in every run of a simulation.

    A simulation's node ids are drawn anew in every run; sorting them would give the same seed
    other cohorts, and other sums' orders, each run. The engine registers partition 0, 1, ... in
    turn, so the order of its in-memory LinkState's nodes (a dict, in registration order, in the
    flwr versions :data:`flower_linkstate.CHECKED_FLWR_VERSIONS`) is the partitions' order. Any
    other Grid (a deployment's; the nodes' own order there is their arrival) gives them sorted.
    """
    ids = set(grid.get_node_ids())
    state = getattr(grid, "state", None)
    if isinstance(state, InMemoryLinkState) and flwr.__version__ in flower_linkstate.CHECKED_FLWR_VERSIONS:
        with state.lock:
            registered = list(state.nodes)
        if ids <= set(registered):
            return [node for node in registered if node in ids]
    return sorted(ids)


def prompt(grid: Grid) -> Grid:
    """``grid`` as a :class:`PromptGrid`: a deployment's ``HttpGrid`` pulling every 0.1 s (and
    :func:`install` applied), the simulation's ``InMemoryGrid`` pulling as each reply is stored
    (where ``strategies.flower_linkstate`` signals stores). Any other Grid, or any Grid where the
    environment sets ``FL_DP_FLOWER_OWN_POLLING=1``, as it is."""
    if os.environ.get(KEEP_FLOWERS_ENV) == "1":
        log.info("%s=1: keeping the Grid's own waits", KEEP_FLOWERS_ENV)
        return grid
    if isinstance(grid, InMemoryGrid) and flower_linkstate.prompt_engine_installed():
        return PromptGrid(grid, grid.pull_interval, flower_linkstate.REPLIES)  # type: ignore[return-value]
    if not isinstance(grid, HttpGrid):
        return grid
    install()
    return PromptGrid(grid)  # type: ignore[return-value]
