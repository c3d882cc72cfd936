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

Upstream change that would remove this module: ``InMemoryLinkState`` keeping its messages indexed
by destination node (as :class:`MessagesByDestination` does), and ``get_message_ins`` testing
``delivered_at`` / ``run_id`` before ``_check_stored_messages``.
"""

from __future__ import annotations

import logging
import os

import flwr
from flwr.app import Message
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now

log = logging.getLogger("fl_dp")

CHECKED_FLWR_VERSIONS = ("1.41.0", "1.42.0")
ORIGINAL_GET_MESSAGE_INS = InMemoryLinkState.get_message_ins


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
    delivered_at = now().isoformat()
    for message in found:
        message.metadata.delivered_at = delivered_at
    return found


KEEP_FLOWERS_ENV = "FL_DP_FLOWER_OWN_LOOKUP"


def install() -> bool:
    """Use :func:`get_message_ins` in this process's in-memory LinkStates.

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
    return True
