"""What a process leaves behind when it exits: tables, registry keys, group memberships.

Modules register a handler; the node calls :func:`cleanup` once for each exited process
that asked for it (with ``native.mark_cleanup()``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rebeam")
_handlers: list[Callable[[Any], None]] = []


def on_exit(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    """Registers ``handler(pid)`` to run when a process that marked itself exits."""
    _handlers.append(handler)
    return handler


def cleanup(pid: Any) -> None:
    """Runs every handler for ``pid``; one failing handler does not stop the others."""
    for handler in _handlers:
        try:
            handler(pid)
        except Exception:
            log.exception("cleanup of %s by %s failed", pid, handler.__qualname__)
