"""A cheaper message lookup for Flower's in-memory LinkState (the simulation engine's).

In flwr 1.41 and 1.42 (byte-identical there), ``InMemoryLinkState.get_message_ins(node_id)``
validates every stored message (expiry, federation membership) before it checks whether the
message is addressed to ``node_id``. The simulation engine asks once per virtual node every 0.1 s, so with N
nodes and N requests in flight one sweep makes N*N validations, under the state's lock and
the GIL that the threads dispatching messages to Ray also need. Measured with
``benchmarks/simulation.py`` at 100 clients, this costs ~0.5 s of a ~3 s round.

:func:`get_message_ins` returns the same messages: it checks the destination (and
that the message is undelivered) first and validates only those candidates. Invalid
messages addressed to other nodes are purged when those nodes ask, as before, rather than
when any node asks. :func:`install` applies it to the flwr versions it was checked
against and leaves other versions alone.

Upstream change that would remove this module: in ``InMemoryLinkState.get_message_ins``, test
``dst_node_id`` / ``delivered_at`` / ``run_id`` before ``_check_stored_messages`` (or index the
undelivered messages by destination node).
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


def get_message_ins(self: InMemoryLinkState, node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
    """The undelivered, valid messages for ``node_id`` (at most ``limit``), marked delivered."""
    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found: list[Message] = []
    with self.lock:
        for msg_id, candidate in list(self.message_ins_store.items()):
            metadata = candidate.metadata
            if metadata.dst_node_id != node_id or metadata.delivered_at != "":
                continue
            if run_id is not None and metadata.run_id != run_id:
                continue
            self._check_stored_messages({msg_id})  # may delete it: expired, or left the federation
            if (message := self.message_ins_store.get(msg_id)) is not None:
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
    InMemoryLinkState.get_message_ins = get_message_ins  # type: ignore[method-assign]
    return True
