"""Names: local (``str``), cluster-wide (``Global``) and user-defined (``Via``).

``Via(registry, key)`` is OTP's ``{via, Module, Name}``: any object with
``register_name(key, pid) -> bool``, ``unregister_name(key)`` and
``whereis_name(key) -> Pid | None`` (optionally ``send(key, message)``) can back a name,
and the name works wherever a local or global one does. The runtime releases a name it
registered through a registry when the process exits."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from . import _cleanup
from ._errors import NameTaken, UnknownName
from ._native import native
from ._pid import Pid
from ._types import Global


@runtime_checkable
class NameRegistry(Protocol):
    """What a user-defined registry provides (``send(key, message)`` is optional)."""

    def register_name(self, key: Any, pid: Pid) -> bool:
        """Registers ``pid`` under ``key``; False if ``key`` is taken."""
        ...

    def unregister_name(self, key: Any) -> None:
        """Removes ``key``."""
        ...

    def whereis_name(self, key: Any) -> Pid | None:
        """The process under ``key``, or None."""
        ...


@dataclass(frozen=True)
class Via:
    """A name held by a user-defined ``registry`` under ``key``: ``Via(registry, key)``."""

    registry: NameRegistry
    key: Hashable

    def __post_init__(self) -> None:
        missing = [m for m in ("register_name", "unregister_name", "whereis_name")
                   if not callable(getattr(self.registry, m, None))]
        if missing:
            raise TypeError(
                f"Via: {type(self.registry).__name__} is not a registry: it lacks "
                f"{', '.join(missing)} (give an object with register_name, unregister_name "
                "and whereis_name, such as a rebeam.KeyRegistry with unique keys)")

    def whereis(self) -> Pid | None:
        """The process registered under this name, or None."""
        pid = self.registry.whereis_name(self.key)
        if pid is not None and not isinstance(pid, Pid):
            raise TypeError(f"{type(self.registry).__name__}.whereis_name({self.key!r}) returned "
                            f"{pid!r}; it must return a Pid or None")
        return pid

    def __repr__(self) -> str:
        return f"Via({self.registry!r}, {self.key!r})"


Name: TypeAlias = str | Global | Via
"""Anything a process can be registered under."""

Dest: TypeAlias = Pid | str | Global | Via
"""Where a message, call or signal goes: a pid or a name."""


def whereis_name(name: Name) -> Pid | None:
    """The process registered under a local, global or ``Via`` name, or None."""
    if isinstance(name, Via):
        return name.whereis()
    if isinstance(name, Global):
        return native.whereis_global(name.name)
    return native.whereis(name)


def pid_of(dest: Dest) -> Pid:
    """The pid behind ``dest``; raises :class:`UnknownName` for a name nobody holds."""
    if isinstance(dest, Via):
        pid = dest.whereis()
        if pid is None:
            raise UnknownName(dest)
        return pid
    if isinstance(dest, Pid):
        return dest
    pid = whereis_name(dest)
    if pid is None:
        raise UnknownName(dest)
    return pid


# The names this node registered through a Via, by process: released when it exits.
_held: dict[Pid, list[tuple[NameRegistry, Hashable]]] = {}
_held_lock = threading.Lock()


def register_via(name: Via, pid: Pid) -> None:
    """Registers ``pid`` under ``name`` in its registry; raises :class:`NameTaken`."""
    if not isinstance(pid, Pid):
        raise TypeError(f"register: expected a Pid, got {type(pid).__name__}")
    native.mark_cleanup(pid)  # raises Exit(noproc) for a dead pid, as register does
    if not name.registry.register_name(name.key, pid):
        raise NameTaken(name, name.whereis())
    with _held_lock:
        _held.setdefault(pid, []).append((name.registry, name.key))


def unregister_via(name: Via) -> None:
    """Removes ``name`` from its registry."""
    pid = name.whereis()
    if pid is not None:
        with _held_lock:
            entries = _held.get(pid, [])
            entries[:] = [(r, k) for r, k in entries if not (r is name.registry and k == name.key)]
    name.registry.unregister_name(name.key)


def register_name(name: Name, pid: Pid) -> None:
    """Registers ``pid`` under a local, ``Global`` or ``Via`` name."""
    if isinstance(name, Via):
        register_via(name, pid)
    elif isinstance(name, Global):
        _register_global(name.name, pid)
    else:
        native.register(name, pid)


RELEASE_WAIT = 5.0
"""Seconds a registration waits for the controller to release a global name whose holder
was a process of this node that has exited (its exit report is still on the way)."""


def _register_global(name: str, pid: Pid) -> None:
    # A local name goes with its process at once; a global one when the controller applies
    # the exit report, a moment later. A supervisor restarting a globally named child must
    # not fail on that moment, so a dead local holder's name is waited for.
    deadline = time.monotonic() + RELEASE_WAIT
    while True:
        try:
            native.register_global(name, pid)
            return
        except NameTaken as taken:
            holder = taken.holder
            stale = (isinstance(holder, Pid) and holder.node == native.stats()["node"]
                     and not native.is_alive(holder))
            if not stale or time.monotonic() >= deadline:
                raise
        time.sleep(0.002)


@_cleanup.on_exit
def _release(pid: Any) -> None:
    with _held_lock:
        entries = _held.pop(pid, [])
    for registry, key in entries:
        # Only if the key still names this process: a successor may hold it by now.
        if registry.whereis_name(key) == pid:
            registry.unregister_name(key)
