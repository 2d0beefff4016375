"""Values that appear in messages: Down, Crash, Global and the timeout marker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from ._pid import Pid, Ref

Reason: TypeAlias = object
"""An exit reason: ``"normal"``, ``"shutdown"``, ``("shutdown", term)``, ``"kill"``/``"killed"``,
``"noproc"``, ``"noconnection"``, a :class:`Crash` for an uncaught exception, or any other
value a process chose with ``stop``/``exit``. Narrow it with ``==`` or ``isinstance``."""


@dataclass(frozen=True)
class Crash:
    """Exit reason of a process whose code raised an uncaught exception."""

    type: str
    message: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class Down:
    """A monitor fired: ``pid`` exited with ``reason``; ``ref`` is what ``monitor`` returned."""

    ref: Ref
    pid: Pid
    reason: Reason


@dataclass(frozen=True)
class NodeDown:
    """The message :func:`rebeam.monitor_node` delivers once when ``node`` is lost (killed,
    cut off, or left the cluster), or at once if it was not a live member."""

    node: str


@dataclass(frozen=True)
class Global:
    """A cluster-wide name, held by the controller."""

    name: str


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"rebeam.{self._name}"

    def __reduce__(self) -> str:
        return self._name


NOREPLY = _Marker("NOREPLY")
"""Returned from ``handle_call`` to reply later with ``rebeam.reply``."""

TIMEOUT = _Marker("TIMEOUT")
"""The message ``handle_info`` gets when a GenServer's idle timeout passes."""
