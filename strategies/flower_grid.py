"""The ServerApp's side of fast deployment rounds: ask the SuperLink for replies every 0.1 s.

Flower 1.42's deployment Grid (``HttpGrid``, ``flwr/superlink/grid/http_grid.py``) waits in two places
that, on a two-node TLS deployment of the CNN, made most of a round:

- ``send_and_receive`` pushes a round's messages, then pulls their replies and sleeps 3 s between
  two pulls. :class:`PromptGrid` runs the same loop (push, pull until every reply is in or
  ``timeout`` has passed) through the Grid's public ``push_messages`` / ``pull_messages`` with a
  wait of :data:`PULL_SECONDS`; everything else goes to the wrapped Grid.
- ``pull_messages`` fetches a reply's parts with ``pull_objects``, whose first retry of a part not
  yet at the SuperLink comes after 1 s. :func:`install` makes those retries start at
  :data:`PULL_SECONDS` (doubling up to 1 s, as many tries as Flower allows), for the flwr version
  it was checked against only, and logs that it did.

The messages and replies are Flower's; only how soon the ServerApp asks again changes. Upstream
change that would remove this module: a ``pull_interval`` of ``HttpGrid`` as ``InMemoryGrid`` has,
used for both waits. The SuperNode's own waits are shortened by ``scripts/flower_runtime.py``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import flwr
from flwr.app import Message
from flwr.serverapp import Grid
from flwr.superlink.grid import HttpGrid, http_grid

log = logging.getLogger("fl_dp")

PULL_SECONDS = 0.1
CHECKED_FLWR_VERSIONS = ("1.42.0",)
#: set to 1 to keep HttpGrid's own waits (to measure against them)
KEEP_FLOWERS_ENV = "FL_DP_FLOWER_OWN_POLLING"
ORIGINAL_PULL_OBJECTS = http_grid.pull_objects


class PromptGrid:
    """``grid`` with a ``send_and_receive`` that pulls replies every ``pull_seconds``."""

    def __init__(self, grid: Grid, pull_seconds: float = PULL_SECONDS) -> None:
        self.grid, self.pull_seconds = grid, pull_seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        pending = set(self.grid.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        replies: list[Message] = []
        while pending and (timeout is None or time.time() < end):
            pulled = list(self.grid.pull_messages(pending))
            replies.extend(pulled)
            pending -= {m.metadata.reply_to_message_id for m in pulled}
            if pending:
                time.sleep(self.pull_seconds)
        return replies


def install(version: str = flwr.__version__) -> bool:
    """Retry a reply's missing parts after :data:`PULL_SECONDS` in this process's HttpGrids;
    False (nothing changed) on a flwr version this was not checked against."""
    if version not in CHECKED_FLWR_VERSIONS:
        log.info("flwr %s: keeping HttpGrid's own retries of reply parts", version)
        return False
    http_grid.pull_objects = functools.partial(ORIGINAL_PULL_OBJECTS, initial_backoff=PULL_SECONDS, backoff_cap=1.0)
    log.info("flwr %s: HttpGrid retries reply parts after %.2f s", version, PULL_SECONDS)
    return True


def prompt(grid: Grid) -> Grid:
    """``grid`` as a :class:`PromptGrid` (and :func:`install` applied) if it is a deployment's
    ``HttpGrid``; any other Grid (the simulation's waits 0.1 s already), or any Grid where the
    environment sets ``FL_DP_FLOWER_OWN_POLLING=1``, as it is."""
    if not isinstance(grid, HttpGrid):
        return grid
    if os.environ.get(KEEP_FLOWERS_ENV) == "1":
        log.info("%s=1: keeping HttpGrid's own waits", KEEP_FLOWERS_ENV)
        return grid
    install()
    return PromptGrid(grid)  # type: ignore[return-value]
