"""Pid, Ref and Sender: one type each, inside a node and outside.

Inside a node the runtime makes its own (native) pids, refs and reply handles; outside, the
client gets these pure-Python ones in replies. Each class here is the type users name in
annotations and ``isinstance`` checks: the node's native class is registered as a virtual
subclass, and constructing one inside a node returns the native value, so the two never
meet in one interpreter."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any

from ._native import IN_NODE, native


@dataclass(frozen=True, order=True)
class Pid(metaclass=ABCMeta):
    """A process identifier: node, node incarnation, serial. Never reused; printable as
    ``<node.3f2c.42>``; hashable, ordered and picklable (it can travel in messages)."""

    node: str
    incarnation: int
    serial: int

    def __new__(cls, node: str, incarnation: int, serial: int) -> Pid:
        if IN_NODE and cls is Pid:
            return native.Pid(node, incarnation, serial)
        return super().__new__(cls)

    def __repr__(self) -> str:
        return f"<{self.node}.{self.incarnation & 0xFFFF:04x}.{self.serial}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (restore_pid, (self.node, self.incarnation, self.serial))


@dataclass(frozen=True)
class Ref(metaclass=ABCMeta):
    """A unique reference naming a monitor or a timer."""

    id: int

    def __new__(cls, id: int) -> Ref:
        if IN_NODE and cls is Ref:
            return native.Ref(id)
        return super().__new__(cls)

    def __repr__(self) -> str:
        return f"#Ref<{self.id}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (restore_ref, (self.id,))


class Sender(metaclass=ABCMeta):
    """Who waits for a reply: given to ``handle_call``, used with :func:`rebeam.reply`.

    Only the node makes them; ``pid`` is the caller (None for a caller outside processes)."""

    @property
    @abstractmethod
    def pid(self) -> Pid | None:
        """The calling process, or None for a caller outside processes."""


if IN_NODE:
    Pid.register(native.Pid)
    Ref.register(native.Ref)
    Sender.register(native.Sender)  # type: ignore[type-abstract]


def restore_pid(node: str, incarnation: int, serial: int) -> Pid:
    """Rebuilds a pickled pid: the node's own type inside a node, :class:`Pid` outside."""
    return Pid(node, incarnation, serial)


def restore_ref(ref_id: int) -> Ref:
    """Rebuilds a pickled reference, as :func:`restore_pid` does for pids."""
    return Ref(ref_id)
