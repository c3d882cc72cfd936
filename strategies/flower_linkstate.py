"""A cheaper message lookup for Flower's in-memory LinkState (the simulation engine's).

In flwr 1.41 and 1.42 (byte-identical there), ``InMemoryLinkState.get_message_ins(node_id)``
validates every stored message (expiry, federation membership) before it checks whether the
message is addressed to ``node_id``. The simulation engine asks once per virtual node every 0.1 s, so with N
nodes and N requests in flight one sweep makes N*N validations, under the state's lock and
the GIL that the threads dispatching messages to Ray also need. Measured with
``benchmarks/simulation.py`` at 100 clients, this costs ~0.5 s of a ~3 s round.

:func:`get_message_ins` returns the same messages: it looks only at the messages addressed
to ``node_id`` (the store is indexed by destination, :class:`MessagesByDestination`, so a sweep
over N nodes costs O(N + messages) rather than O(N * messages)), skips those already
delivered, and validates only the candidates. Invalid messages addressed to other nodes are
purged when those nodes ask, as before, rather than when any node asks. :func:`install`
applies it to the flwr versions it was checked against and leaves other versions alone.

The engine also polls: ``vce_api.add_messages_to_queue`` sweeps every node, then waits 0.1 s, so a
round's requests wait up to 0.1 s before the first is dispatched, and ``InMemoryGrid.send_and_receive``
sleeps 0.1 s between two pulls of replies, so the last reply waits up to 0.1 s more.
:func:`install` (unless ``FL_DP_FLOWER_OWN_POLLING=1``) wraps ``store_message_ins`` /
``store_message_res`` to set :data:`MESSAGES_STORED` / note in :data:`REPLIES` which request a
stored reply answers (and set its event), and puts
:func:`add_messages_to_queue` in the engine's place: the same loop, woken by a store (and at least
every 0.1 s, as Flower's), sweeping only the nodes that have messages waiting;
``strategies.flower_grid.prompt`` makes the Grid wait on :data:`REPLIES` and pull only the
requests answered meanwhile (every pending one at least every 0.1 s, as Flower's Grid does).

Upstream change that would remove this module: ``InMemoryLinkState`` keeping its messages indexed
by destination node (as :class:`MessagesByDestination` does), ``get_message_ins`` testing
``delivered_at`` / ``run_id`` before ``_check_stored_messages``, and the in-memory state signalling a
stored message (a ``threading.Condition``) that the engine's sweep and ``InMemoryGrid`` wait on
instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import threading
from queue import Queue
from typing import Any

import flwr
from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

log = logging.getLogger("fl_dp")

CHECKED_FLWR_VERSIONS = ("1.41.0", "1.42.0")
#: the versions whose engine loop (vce_api.add_messages_to_queue) and stores the woken sweep was checked against
PROMPT_ENGINE_FLWR_VERSIONS = ("1.42.0",)
ORIGINAL_GET_MESSAGE_INS = InMemoryLinkState.get_message_ins
ORIGINAL_STORE_MESSAGE_INS = InMemoryLinkState.store_message_ins
ORIGINAL_STORE_MESSAGE_RES = InMemoryLinkState.store_message_res
ORIGINAL_ADD_MESSAGES_TO_QUEUE = vce_api.add_messages_to_queue
#: the longest the engine's sweep waits between two sweeps (Flower's wait)
SWEEP_SECONDS = 0.1
#: set after every request stored in an in-memory LinkState of this process
MESSAGES_STORED = threading.Event()


class StoredReplies:
    """Which awaited requests a stored reply has answered since they were last taken, and
    :attr:`event`, set after every store: a Grid pulls just those requests, not every pending one,
    each time it wakes. Only requests a Grid awaits (:meth:`expect`) are noted: a late reply is not kept."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._awaited: set[str] = set()
        self._answered: set[str] = set()

    def expect(self, request_ids: set[str]) -> None:
        with self._lock:
            self._awaited |= request_ids

    def add(self, request_id: str | None) -> None:
        with self._lock:
            if request_id in self._awaited:
                self._answered.add(request_id)
        self.event.set()

    def take(self, request_ids: set[str]) -> set[str]:
        """Those of ``request_ids`` answered since they were last taken (no longer held after)."""
        with self._lock:
            answered = self._answered & request_ids
            self._answered -= answered
        return answered

    def forget(self, request_ids: set[str]) -> None:
        """No longer await ``request_ids`` (the Grid's wait for them has ended)."""
        with self._lock:
            self._awaited -= request_ids
            self._answered -= request_ids


#: the replies stored in an in-memory LinkState of this process (its event: set after every one)
REPLIES = StoredReplies()


class MessagesByDestination(dict[str, Message]):
    """The LinkState's ``message_ins_store`` (message id -> Message) that also keeps, per destination
    node, its message ids in the order they were stored; Flower only stores (``store[id] = m``)
    and deletes (``del store[id]``) entries, and never changes a stored message's destination."""

    def __init__(self, messages: dict[str, Message] | None = None) -> None:
        super().__init__()
        self.by_destination: dict[int, dict[str, None]] = {}
        for message_id, message in (messages or {}).items():
            self[message_id] = message

    def __setitem__(self, message_id: str, message: Message) -> None:
        if message_id in self:  # replaced in place, as a dict does
            self._unindex(message_id)
        super().__setitem__(message_id, message)
        self.by_destination.setdefault(message.metadata.dst_node_id, {})[message_id] = None

    def __delitem__(self, message_id: str) -> None:
        self._unindex(message_id)
        super().__delitem__(message_id)

    def _unindex(self, message_id: str) -> None:
        destination = self[message_id].metadata.dst_node_id
        ids = self.by_destination[destination]
        del ids[message_id]
        if not ids:
            del self.by_destination[destination]

    def _unsupported(self, *args: object, **kwargs: object) -> None:
        raise TypeError("MessagesByDestination supports only store[id] = message and del store[id]")

    pop = popitem = clear = update = setdefault = __ior__ = _unsupported  # type: ignore[assignment]


def indexed_store(state: InMemoryLinkState) -> MessagesByDestination:
    """``state``'s message store, indexed by destination from its first lookup on (under its lock)."""
    store = state.message_ins_store
    if not isinstance(store, MessagesByDestination):
        store = state.message_ins_store = MessagesByDestination(store)
    return store


def get_message_ins(self: InMemoryLinkState, node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
    """The undelivered, valid messages for ``node_id`` (at most ``limit``), marked delivered."""
    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found: list[Message] = []
    with self.lock:
        store = indexed_store(self)
        for msg_id in list(store.by_destination.get(node_id, ())):
            if (candidate := store.get(msg_id)) is None:  # deleted by an earlier candidate's check
                continue
            metadata = candidate.metadata
            if metadata.delivered_at != "":
                continue
            if run_id is not None and metadata.run_id != run_id:
                continue
            self._check_stored_messages({msg_id})  # may delete it: expired, or left the federation
            if (message := store.get(msg_id)) is not None:
                found.append(message)
            if limit and len(found) == limit:
                break
        # marked inside the lock: two sweeps (see install_prompt_engine) never hand out one message twice
        delivered_at = now().isoformat()
        for message in found:
            message.metadata.delivered_at = delivered_at
    return found


def store_message_ins(self: InMemoryLinkState, message: Message) -> str | None:
    """Flower's ``store_message_ins``, then :data:`MESSAGES_STORED` set."""
    message_id = ORIGINAL_STORE_MESSAGE_INS(self, message)
    MESSAGES_STORED.set()
    return message_id


def store_message_res(self: InMemoryLinkState, message: Message) -> str | None:
    """Flower's ``store_message_res``, then the request it answers added to :data:`REPLIES` (where
    it was stored), whose event is set."""
    message_id = ORIGINAL_STORE_MESSAGE_RES(self, message)
    REPLIES.add(message.metadata.reply_to_message_id if message_id is not None else None)
    return message_id


def nodes_with_messages(state: InMemoryLinkState, node_ids: Any) -> list[int]:
    """The nodes of ``node_ids`` with messages in ``state``'s store (all of ``node_ids`` while the
    store is not indexed by destination, i.e. with Flower's own lookup)."""
    if InMemoryLinkState.get_message_ins is not get_message_ins:
        return list(node_ids)
    with state.lock:
        waiting = list(indexed_store(state).by_destination)
    return [node_id for node_id in waiting if node_id in node_ids]


def add_messages_to_queue(state: InMemoryLinkState, queue: Queue[Message], nodes_mapping: Any, f_stop: threading.Event) -> None:
    """The engine's loop (``vce_api.add_messages_to_queue``): each node's next message into the
    engine's queue, at most one a node and sweep; a sweep starts as soon as a message is stored, and at most
    :data:`SWEEP_SECONDS` after the last, and looks only at nodes with messages waiting."""
    while not f_stop.is_set():
        MESSAGES_STORED.clear()  # before the sweep: a message stored during it wakes the next one
        for node_id in nodes_with_messages(state, nodes_mapping):
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        MESSAGES_STORED.wait(SWEEP_SECONDS)


_attached: set[int] = set()


def install_prompt_engine() -> bool:
    """Wake the engine's sweep and the Grid's pulls by stores: :func:`add_messages_to_queue` in
    the engine's place, and beside an engine loop that already runs in this process (the ServerApp
    and the engine start together; both loops hand out each message once, under the state's lock).
    False (nothing changed) if ``FL_DP_FLOWER_OWN_POLLING=1``, our lookup is not installed or flwr
    is not a version of :data:`PROMPT_ENGINE_FLWR_VERSIONS`."""
    if os.environ.get(KEEP_FLOWERS_POLLING_ENV) == "1":
        log.info("%s=1: keeping the simulation engine's and InMemoryGrid's 0.1 s polls", KEEP_FLOWERS_POLLING_ENV)
        return False
    if InMemoryLinkState.get_message_ins is not get_message_ins or flwr.__version__ not in PROMPT_ENGINE_FLWR_VERSIONS:
        return False
    if not prompt_engine_installed():
        log.info(
            "flwr %s: the simulation engine and Grid wake on stored messages (strategies/flower_linkstate.py)", flwr.__version__
        )
    InMemoryLinkState.store_message_ins = store_message_ins  # type: ignore[method-assign]
    InMemoryLinkState.store_message_res = store_message_res  # type: ignore[method-assign]
    vce_api.add_messages_to_queue = add_messages_to_queue  # type: ignore[assignment]
    for thread in threading.enumerate():
        if getattr(thread, "_target", None) is ORIGINAL_ADD_MESSAGES_TO_QUEUE and thread.ident not in _attached:
            _attached.add(thread.ident or 0)
            threading.Thread(target=add_messages_to_queue, args=thread._args, daemon=True, name="fl-dp-sweep").start()  # type: ignore[attr-defined]
            log.info("the simulation engine's loop already ran: a woken sweep runs beside it")
    return True


def prompt_engine_installed() -> bool:
    """Whether this process's in-memory LinkStates signal stored replies (:data:`REPLIES`)."""
    return InMemoryLinkState.store_message_res is store_message_res


KEEP_FLOWERS_ENV = "FL_DP_FLOWER_OWN_LOOKUP"
#: set to 1 to keep the engine's and Grids' own polls (the same key strategies.flower_grid reads)
KEEP_FLOWERS_POLLING_ENV = "FL_DP_FLOWER_OWN_POLLING"


def install() -> bool:
    """Use :func:`get_message_ins` in this process's in-memory LinkStates, and
    :func:`install_prompt_engine`.

    False (nothing changed) if flwr is not a checked version, or if the environment sets
    ``FL_DP_FLOWER_OWN_LOOKUP=1`` (to compare with Flower's own lookup).
    """
    if os.environ.get(KEEP_FLOWERS_ENV) == "1":
        log.info("%s=1: keeping Flower's InMemoryLinkState.get_message_ins", KEEP_FLOWERS_ENV)
        return False
    if flwr.__version__ not in CHECKED_FLWR_VERSIONS:
        log.info("flwr %s: keeping its own InMemoryLinkState.get_message_ins", flwr.__version__)
        return False
    if InMemoryLinkState.get_message_ins is not get_message_ins:
        log.info("flwr %s: InMemoryLinkState looks messages up by destination (strategies/flower_linkstate.py)", flwr.__version__)
    InMemoryLinkState.get_message_ins = get_message_ins  # type: ignore[method-assign]
    install_prompt_engine()
    return True
