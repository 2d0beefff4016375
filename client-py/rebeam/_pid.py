"""Pure-Python Pid and Ref for code outside a node (the client); same printing and equality."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Pid:
    """A process identifier: node, node incarnation, serial."""

    node: str
    incarnation: int
    serial: int

    def __repr__(self) -> str:
        return f"<{self.node}.{self.incarnation & 0xFFFF:04x}.{self.serial}>"


@dataclass(frozen=True)
class Ref:
    """A unique reference naming a monitor or a timer."""

    id: int

    def __repr__(self) -> str:
        return f"#Ref<{self.id}>"


class Sender:
    """Reply handles exist only inside a node."""


def restore_pid(node: str, incarnation: int, serial: int) -> object:
    """Rebuilds a pickled pid: the node's own type inside a node, :class:`Pid` outside."""
    from ._native import IN_NODE, native

    if IN_NODE:
        return native.Pid(node, incarnation, serial)
    return Pid(node, incarnation, serial)


def restore_ref(ref_id: int) -> object:
    """Rebuilds a pickled reference, as :func:`restore_pid` does for pids."""
    from ._native import IN_NODE, native

    if IN_NODE:
        return native.Ref(ref_id)
    return Ref(ref_id)
