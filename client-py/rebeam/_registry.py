"""A key registry for dispatch and pub/sub: processes register under keys, with unique or
duplicate keys; entries vanish when their process exits (like Elixir's Registry)."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from typing import Any, Literal

from . import _cleanup
from ._errors import NameTaken
from ._native import native
from ._pid import Pid

_registries: dict[str, KeyRegistry] = {}
_lock = threading.Lock()


class KeyRegistry:
    """Processes under keys. ``keys="unique"``: one process per key; ``"duplicate"``: many.

    Entries are ``(pid, value)`` pairs; only the registering process adds or removes its own
    entries, and they are removed when it exits."""

    def __init__(self, name: str, keys: Literal["unique", "duplicate"] = "unique") -> None:
        if keys not in ("unique", "duplicate"):
            raise ValueError(f"keys must be 'unique' or 'duplicate', got {keys!r}")
        with _lock:
            if name in _registries:
                raise NameTaken(name, None)
            _registries[name] = self
        self.name = name
        self.keys = keys
        self._entries: dict[Hashable, dict[Any, Any]] = {}
        self._by_pid: dict[Any, set[Hashable]] = {}
        # Executor threads may register at once; check-and-set of a unique key is one step.
        self._lock = threading.RLock()

    def register(self, key: Hashable, value: Any = None) -> None:
        """Registers the calling process under ``key`` with ``value``."""
        pid = native.mark_cleanup()
        with self._lock:
            entries = self._entries.setdefault(key, {})
            if self.keys == "unique" and entries and pid not in entries:
                raise NameTaken(key, next(iter(entries)))
            entries[pid] = value
            self._by_pid.setdefault(pid, set()).add(key)

    def unregister(self, key: Hashable) -> None:
        """Removes the calling process's entry under ``key``."""
        pid = native.self_pid()
        with self._lock:
            self._remove(pid, key)
            self._by_pid.get(pid, set()).discard(key)

    # -- the registry protocol of `rebeam.Via`: unique keys only, as Elixir's Registry --

    def _unique(self, what: str) -> None:
        if self.keys != "unique":
            raise TypeError(f"KeyRegistry {self.name!r}: {what} needs keys='unique' "
                            "(a duplicate-key registry has no single process per key)")

    def register_name(self, key: Hashable, pid: Pid) -> bool:
        """Registers ``pid`` (any local process) under ``key``; False if another holds it."""
        self._unique("Via")
        native.mark_cleanup(pid)
        with self._lock:
            entries = self._entries.setdefault(key, {})
            if entries and pid not in entries:
                return False
            entries[pid] = None
            self._by_pid.setdefault(pid, set()).add(key)
        return True

    def unregister_name(self, key: Hashable) -> None:
        """Removes ``key``, whichever process holds it."""
        with self._lock:
            for pid in list(self._entries.get(key, {})):
                self._remove(pid, key)
                self._by_pid.get(pid, set()).discard(key)

    def whereis_name(self, key: Hashable) -> Pid | None:
        """The process under ``key``, or None."""
        self._unique("Via")
        entries = self._entries.get(key)
        return next(iter(entries), None) if entries else None

    def send(self, key: Hashable, message: object) -> None:
        """Sends ``message`` to the process under ``key``; raises UnknownName if none."""
        pid = self.whereis_name(key)
        if pid is None:
            from ._errors import UnknownName
            from ._names import Via

            raise UnknownName(Via(self, key))
        native.send(pid, message)

    def lookup(self, key: Hashable) -> list[tuple[Any, Any]]:
        """``(pid, value)`` for every process under ``key``."""
        return list(self._entries.get(key, {}).items())

    def keys_of(self, pid: Any) -> list[Hashable]:
        """The keys ``pid`` is registered under."""
        return list(self._by_pid.get(pid, ()))

    def dispatch(self, key: Hashable, message: Any) -> int:
        """Sends ``message`` to every process under ``key``; returns how many."""
        targets = list(self._entries.get(key, {}))
        for pid in targets:
            native.send(pid, message)
        return len(targets)

    def count(self) -> int:
        """Number of entries."""
        return sum(len(e) for e in self._entries.values())

    def __repr__(self) -> str:
        return f"KeyRegistry({self.name!r}, keys={self.keys!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Travels by name, like a table: the receiver gets the node's live registry.
        return (registry, (self.name,))

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))

    def _remove(self, pid: Any, key: Hashable) -> None:
        entries = self._entries.get(key)
        if entries is not None:
            entries.pop(pid, None)
            if not entries:
                del self._entries[key]

    def _forget(self, pid: Any) -> None:
        with self._lock:
            for key in self._by_pid.pop(pid, ()):
                self._remove(pid, key)

    def close(self) -> None:
        """Removes the registry."""
        with _lock:
            _registries.pop(self.name, None)


def registry(name: str) -> KeyRegistry:
    """The key registry created under ``name``."""
    try:
        return _registries[name]
    except KeyError:
        raise LookupError(f"no key registry is named {name!r}") from None


@_cleanup.on_exit
def _forget_pid(pid: Any) -> None:
    for reg in list(_registries.values()):
        reg._forget(pid)
