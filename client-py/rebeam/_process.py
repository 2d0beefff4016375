"""Processes: spawning, messages, calls, links, monitors, exits and timers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, overload
from typing import cast as _typing_cast

from ._errors import Exit, Timeout
from ._names import Dest, Name, Via, pid_of, register_via, unregister_via
from ._native import native
from ._pid import Pid, Ref, Sender
from ._types import Reason

__all__ = [
    "Pid", "Ref", "Sender", "call", "cancel_timer", "cast", "demonitor", "exit", "is_alive",
    "link", "monitor", "monitoring", "noreply", "process_info", "processes", "receive",
    "register", "registered", "reply", "run", "self_pid", "send", "send_after", "set_timeout",
    "spawn", "spawn_link", "spawn_monitor", "stop", "trap_exits", "trapping_exits", "unlink",
    "unregister", "whereis",
]

_MISSING: Any = object()
_T = TypeVar("_T")
_D = TypeVar("_D")


def _server_instance(target: Any) -> Any:
    """A fresh instance (``init`` not run) of ``target`` when it is a server class; None for
    a function. Raises TypeError for other classes."""
    from ._genserver import GenServer

    if not inspect.isclass(target):
        return None
    if not issubclass(target, GenServer):
        raise TypeError(
            f"cannot spawn class {target.__qualname__}: a class must derive from "
            "rebeam.GenServer or rebeam.Supervisor; plain functions are spawned as they are"
        )
    return target.__new__(target)


def _start(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], link: bool,
           monitor: bool, max_mailbox: int | None = None,
           max_mailbox_bytes: int | None = None) -> Any:
    server = _server_instance(target)
    if server is not None:
        return native.spawn_server(server, args, kwargs or None, link, monitor, max_mailbox,
                                   max_mailbox_bytes)
    if not callable(target):
        raise TypeError(f"cannot spawn {target!r}: give a GenServer class or a function")
    return native.spawn_function(target, args, kwargs or None, link, monitor, max_mailbox,
                                 max_mailbox_bytes)


def spawn(target: Callable[..., object] | type, *args: Any, **kwargs: Any) -> Pid:
    """Starts a process running ``target`` (a GenServer/Supervisor class or a function).

    A GenServer's ``init(*args, **kwargs)`` runs before ``spawn`` returns; if it raises,
    ``spawn`` raises :class:`rebeam.InitError` from that exception."""
    return _typing_cast(Pid, _start(target, args, kwargs, False, False))


def spawn_link(target: Callable[..., object] | type, *args: Any, **kwargs: Any) -> Pid:
    """Like :func:`spawn`, and links the new process to the caller."""
    return _typing_cast(Pid, _start(target, args, kwargs, True, False))


def spawn_monitor(target: Callable[..., object] | type, *args: Any,
                  **kwargs: Any) -> tuple[Pid, Ref]:
    """Like :func:`spawn`, and monitors the new process; returns ``(pid, ref)``."""
    return _typing_cast("tuple[Pid, Ref]", _start(target, args, kwargs, False, True))


def run(function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Runs ``function`` as a process on the calling thread and returns its result.

    Use it for the top of a script: code outside processes cannot link, monitor or receive."""
    return _typing_cast(_T, native.run(function, args, kwargs or None))


@overload
def receive(match: Callable[[Any], object] | None = None,
            timeout: float | None = None) -> Any: ...
@overload
def receive(match: Callable[[Any], object] | None = None, timeout: float | None = None, *,
            default: _D) -> Any | _D: ...
def receive(match: Callable[[Any], object] | None = None, timeout: float | None = None,
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


# The functions below take any destination. A `Via` name is resolved here, in Python; every
# other destination goes to the node as it is, so pids and local names pay one type check
# (bound once: the hot paths skip the attribute lookups).
_send, _call = native.send, native.call


def send(dest: Dest, message: object) -> None:
    """Sends ``message`` to a pid or name; never blocks, and a message to a dead process is
    dropped. A name nobody holds raises :class:`rebeam.UnknownName`."""
    if dest.__class__ is Via:
        via = dest
        custom = getattr(via.registry, "send", None)
        if callable(custom):
            custom(via.key, message)
            return
        dest = pid_of(via)
    _send(dest, message)


# `rebeam.cast` is the node's function itself (it resolves a `Via` name too): the one-way
# path runs no Python frame of ours. Outside a node it raises NotInNode like the rest.
cast: Callable[[Dest, object], None] = native.cast
"""Sends an asynchronous request to a GenServer (its ``handle_cast``); a name nobody holds is
ignored, as OTP's ``gen_server:cast`` does."""


def call(dest: Dest, request: object, timeout: float | None = 5.0) -> Any:
    """Sends ``request`` to a GenServer and waits up to ``timeout`` seconds for the reply.

    Raises :class:`rebeam.Timeout`, or :class:`rebeam.Exit` when the target is dead, dies
    before replying or no process holds the name (reason ``noproc``)."""
    if dest.__class__ is Via:
        pid = dest.whereis()
        if pid is None:
            raise Exit(dest, "noproc")
        dest = pid
    return _call(dest, request, timeout)


def reply(sender: Sender, value: object) -> bool:
    """Answers a call whose ``handle_call`` returned :func:`noreply`; False if the caller
    no longer waits."""
    return native.reply(sender, value)


def self_pid() -> Pid:
    """The calling process's pid."""
    return native.self_pid()


def link(dest: Dest) -> None:
    """Links the caller with a process (both ways); a dead one sends ``noproc`` at once."""
    native.link(pid_of(dest) if dest.__class__ is Via else dest)


def unlink(dest: Dest) -> None:
    """Removes a link."""
    native.unlink(pid_of(dest) if dest.__class__ is Via else dest)


def monitor(dest: Dest) -> Ref:
    """Watches a process: the caller gets ``Down(ref, pid, reason)`` once when it exits."""
    return native.monitor(pid_of(dest) if dest.__class__ is Via else dest)


def demonitor(ref: Ref, flush: bool = False) -> bool:
    """Removes a monitor (and with ``flush`` a ``Down`` already in the mailbox); False if it
    had fired or was removed before."""
    return native.demonitor(ref, flush)


def exit(dest: Dest, reason: Reason) -> None:
    """Sends an exit signal with ``reason`` (``"kill"`` cannot be trapped)."""
    native.exit(pid_of(dest) if dest.__class__ is Via else dest, reason)


def trap_exits(on: bool = True) -> bool:
    """Turns exit signals into ``Exit(pid, reason)`` messages; returns the previous setting."""
    return native.trap_exits(on)


def stop(reason: Reason = "normal") -> None:
    """Ends the calling process with ``reason`` when its handler returns."""
    native.stop(reason)


def send_after(seconds: float, dest: Dest, message: object) -> Ref:
    """Sends ``message`` to ``dest`` after ``seconds``; returns a timer ref to cancel it.
    A ``Via`` name is resolved now, as OTP resolves a pid when the timer is set."""
    return native.send_after(seconds, pid_of(dest) if dest.__class__ is Via else dest, message)


def cancel_timer(timer: Ref) -> float | None:
    """Cancels a timer; returns the seconds that were left, or None if it fired already."""
    return native.cancel_timer(timer)


def set_timeout(seconds: float) -> None:
    """A GenServer gets ``rebeam.TIMEOUT`` in ``handle_info`` if no message arrives in time."""
    native.set_timeout(seconds)


def is_alive(pid: Pid) -> bool:
    """Whether a local process is alive."""
    return native.is_alive(pid)


def process_info(pid: Pid) -> dict[str, Any] | None:
    """Facts about a live local process (what ``rebeam ps`` shows), or None."""
    return native.process_info(pid)


def processes() -> list[Pid]:
    """Every live local process."""
    return native.processes()


def register(name: str | Via, pid: Pid) -> None:
    """Registers ``pid`` under a local name (or in a user-defined registry with ``Via``);
    raises :class:`rebeam.NameTaken`. The name is released when the process exits."""
    if isinstance(name, Via):
        register_via(name, pid)
    else:
        native.register(name, pid)


def unregister(name: str | Via) -> bool:
    """Removes a local (or ``Via``) name; returns whether it was registered."""
    if isinstance(name, Via):
        held = name.whereis() is not None
        unregister_via(name)
        return held
    return native.unregister(name)


def whereis(name: Name) -> Pid | None:
    """The process registered under a local, ``Global`` or ``Via`` name, or None."""
    from ._names import whereis_name

    return whereis_name(name)


def registered() -> dict[str, Pid]:
    """Every local name of this node and its process."""
    return native.registered()


@contextmanager
def trapping_exits(on: bool = True) -> Iterator[None]:
    """``with trapping_exits():`` traps exit signals inside the block, then restores the
    previous setting (signals that arrived meanwhile stay in the mailbox as ``Exit``)."""
    previous = native.trap_exits(on)
    try:
        yield
    finally:
        native.trap_exits(previous)


@contextmanager
def monitoring(dest: Dest) -> Iterator[Ref]:
    """``with monitoring(pid) as ref:`` monitors a process for the block; on leaving it the
    monitor is removed and an unreceived ``Down`` for it is flushed."""
    ref = monitor(dest)
    try:
        yield ref
    finally:
        native.demonitor(ref, True)

