"""GenServer: a process whose state lives on ``self`` and whose handlers the node calls."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from ._errors import Error
from ._pid import Sender
from ._types import Reason

log = logging.getLogger("rebeam")


class GenServer:
    """Base class of server processes. Override the handlers you need.

    ``init(*args)`` runs when the process starts (``spawn`` returns after it); the return
    value of ``handle_call`` is the reply (return ``rebeam.noreply()`` and later call
    ``rebeam.reply(sender, value)`` to answer later); ``handle_info`` gets raw messages,
    ``Down``/``Exit`` values and ``rebeam.TIMEOUT``; ``terminate(reason)`` runs when the
    server stops by ``rebeam.stop``, a crash, or a shutdown from its supervisor.

    ``init``, the ``handle_*`` handlers and ``terminate`` may be ``async def``: they then run
    on the node's event loop, may await I/O, ``rebeam.call_async`` and
    ``rebeam.receive_async``, and the server takes no other message until one returns.
    ``code_change`` stays a plain ``def``."""

    def init(self, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        """Sets up the state; raise to make the start fail."""
        if args or kwargs:
            raise TypeError(
                f"{type(self).__qualname__}.init takes no arguments, but it was started with "
                f"args={args!r} kwargs={kwargs!r}; define init(self, ...) to accept them"
            )
        return None

    def handle_call(self, request: Any, sender: Sender) -> Any:
        """Answers a ``call``; the default crashes the server, as OTP's does."""
        raise Error(f"{type(self).__qualname__} does not handle calls (got {request!r})")

    def handle_cast(self, request: Any) -> Awaitable[None] | None:
        """Handles a ``cast``; the default crashes the server, as OTP's does."""
        raise Error(f"{type(self).__qualname__} does not handle casts (got {request!r})")

    def handle_info(self, message: Any) -> Awaitable[None] | None:
        """Handles any other message; the default logs and drops it."""
        log.debug("%s dropped an unexpected message: %r", type(self).__qualname__, message)
        return None

    def terminate(self, reason: Reason) -> Awaitable[None] | None:
        """Cleans up before the process exits with ``reason``."""

    def code_change(self, old_version: str, extra: Any) -> None:
        """Converts the state on ``self`` when the application is upgraded."""
