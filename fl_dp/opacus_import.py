"""Opacus, imported on first use and without the side effect of its import on logging.

Importing any part of opacus loads its whole privacy engine (about 1.3 s and 110 MB a process),
which a process that never computes an epsilon or a per-sample gradient does not need; and
``opacus.utils.module_utils`` calls ``logging.basicConfig``, which gives the root logger a stderr
handler. From then on every library's records that propagate reach the console: Flower's DEBUG
lines of each SecAgg+ stage in every Ray actor, and each Flower line a second time on the server.
"""

from __future__ import annotations

import logging
from functools import cache


@cache
def import_opacus() -> None:
    """Import opacus once; drop the root handler its import added (none if the root already had one)."""
    root = logging.getLogger()
    before = list(root.handlers)
    import opacus  # noqa: F401

    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
