"""Exceptions raised by the Re:BEAM API; all derive from :class:`Error`."""

from __future__ import annotations

from typing import Any


class Error(Exception):
    """Root of every Re:BEAM exception."""


class Timeout(Error, TimeoutError):
    """A ``call`` or ``receive`` did not complete in time."""


class Exit(Error):
    """A process exit: raised by ``call`` when the target is dead or dies before replying,
    and delivered as a message ``Exit(pid, reason)`` to processes that trap exits."""

    def __init__(self, pid: Any, reason: Any) -> None:
        super().__init__(pid, reason)
        self.pid = pid
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.pid} exited: {self.reason!r}"

    def __repr__(self) -> str:
        return f"Exit({self.pid!r}, {self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Exit) and other.pid == self.pid and other.reason == self.reason
        )

    def __hash__(self) -> int:
        return hash((self.pid, repr(self.reason)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.pid, self.reason))


class InitError(Error):
    """A process failed to start: its ``init`` raised (the original exception is the
    ``__cause__``) or asked to stop. ``reason`` is the exit reason."""

    def __init__(self, pid: Any, reason: Any) -> None:
        super().__init__(pid, reason)
        self.pid = pid
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.pid} failed to start: {self.reason!r}"


class UnknownName(Error, LookupError):
    """A message was addressed to a name that nobody has registered."""

    def __init__(self, name: Any) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no process is registered as {self.name!r}"


class NameTaken(Error):
    """A name is already registered; ``holder`` is the process holding it."""

    def __init__(self, name: Any, holder: Any) -> None:
        super().__init__(name, holder)
        self.name = name
        self.holder = holder

    def __str__(self) -> str:
        return f"the name {self.name!r} is already registered to {self.holder}"


class NotInNode(Error):
    """The actor API was used outside a Re:BEAM node (run the code with ``rebeam-node``)."""


class ProcessKilled(BaseException):
    """Unwinds the code of a process that was killed; not meant to be caught."""
