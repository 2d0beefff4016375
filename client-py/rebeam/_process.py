"""Processes: spawning, messages, calls, links, monitors, exits and timers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ._errors import Timeout
from ._native import IN_NODE, native

if IN_NODE:
    Pid = native.Pid
    Ref = native.Ref
    Sender = native.Sender
else:  # outside a node, pids still arrive in replies from the client
    from ._pid import Pid, Ref, Sender  # type: ignore[assignment]  # noqa: F401

_MISSING: Any = object()


def _start(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], link: bool,
           monitor: bool) -> Any:
    from ._genserver import GenServer

    if inspect.isclass(target):
        if not issubclass(target, GenServer):
            raise TypeError(
                f"cannot spawn class {target.__qualname__}: a class must derive from "
                "rebeam.GenServer or rebeam.Supervisor; plain functions are spawned as they are"
            )
        server = target.__new__(target)
        return native.spawn_server(server, args, kwargs or None, link, monitor)
    if not callable(target):
        raise TypeError(f"cannot spawn {target!r}: give a GenServer class or a function")
    return native.spawn_function(target, args, kwargs or None, link, monitor)


def spawn(target: Callable[..., Any] | type, *args: Any, **kwargs: Any) -> Pid:
    """Starts a process running ``target`` (a GenServer/Supervisor class or a function).

    A GenServer's ``init(*args, **kwargs)`` runs before ``spawn`` returns; if it raises,
    ``spawn`` raises :class:`rebeam.InitError` from that exception."""
    return _start(target, args, kwargs, False, False)


def spawn_link(target: Callable[..., Any] | type, *args: Any, **kwargs: Any) -> Pid:
    """Like :func:`spawn`, and links the new process to the caller."""
    return _start(target, args, kwargs, True, False)


def spawn_monitor(target: Callable[..., Any] | type, *args: Any,
                  **kwargs: Any) -> tuple[Pid, Ref]:
    """Like :func:`spawn`, and monitors the new process; returns ``(pid, ref)``."""
    return _start(target, args, kwargs, False, True)


def run(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs ``function`` as a process on the calling thread and returns its result.

    Use it for the top of a script: code outside processes cannot link, monitor or receive."""
    return native.run(function, args, kwargs or None)


def receive(match: Callable[[Any], bool] | None = None, timeout: float | None = None,
            default: Any = _MISSING) -> Any:
    """Takes the first message for which ``match(message)`` is true (any message without
    ``match``), waiting up to ``timeout`` seconds (forever when None). Other messages stay
    in the mailbox, in order. On timeout returns ``default``, or raises :class:`Timeout`."""
    if default is _MISSING:
        return native.receive(match, timeout)
    try:
        return native.receive(match, timeout)
    except Timeout:
        return default


def noreply() -> Any:
    """Returned from ``handle_call`` to answer later with :func:`reply`."""
    from ._types import NOREPLY

    return NOREPLY


send = native.send
cast = native.cast
call = native.call
reply = native.reply
self_pid = native.self_pid
link = native.link
unlink = native.unlink
monitor = native.monitor
demonitor = native.demonitor
exit = native.exit
trap_exits = native.trap_exits
stop = native.stop
send_after = native.send_after
cancel_timer = native.cancel_timer
set_timeout = native.set_timeout
is_alive = native.is_alive
process_info = native.process_info
processes = native.processes
register = native.register
unregister = native.unregister
whereis = native.whereis
registered = native.registered
