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
