"""GenServer: a process whose state lives on ``self`` and whose handlers the node calls."""

from __future__ import annotations

import builtins
import logging
import reprlib
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


class _StateRepr(reprlib.Repr):
    """``reprlib`` with small limits, and a marker for an object whose own ``__repr__``
    fails (reprlib's default names its address instead, hiding the failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = 10
        self.maxdeque = self.maxarray = 10
        self.maxdict = 10
        self.maxstring = 80
        self.maxlong = 40
        self.maxother = 80

    def repr_instance(self, x: object, level: int) -> str:
        try:
            s = builtins.repr(x)
        except Exception as e:  # noqa: BLE001 - a class's own __repr__ may raise anything
            return f"<repr failed: {type(e).__name__}>"
        if len(s) > self.maxother:
            half = max(0, (self.maxother - 3) // 2)
            s = s[:half] + "..." + s[len(s) - half:]
        return s


def _state_repr(server: object, chars: int) -> str:
    """A server's state for the dashboard's process page: one ``name = repr`` line per
    attribute of the object (each repr bounded by ``reprlib``), the whole cut to ``chars``
    characters (``…`` last when cut)."""
    r = _StateRepr()
    try:
        attrs = getattr(server, "__dict__", None)
        if not isinstance(attrs, dict):
            text = r.repr(server)
        else:
            lines: list[str] = []
            size = 0
            # A copy: a handler running on another thread may change the attributes.
            for name, value in list(attrs.items()):
                line = f"{name} = {r.repr(value)}"
                lines.append(line)
                size += len(line) + 1
                if size > chars:
                    break
            text = "\n".join(lines)
    except Exception as e:  # noqa: BLE001 - iterating user containers may raise anything
        text = f"<repr failed: {type(e).__name__}>"
    return text if len(text) <= chars else text[:max(0, chars - 1)] + "…"
