"""Process groups: named sets of processes across the cluster, for fan-out and pools.

Membership is held by the controllers (every node caches it from its watch stream), so a
group spans nodes. A member leaves its groups when it exits or its node is declared dead.
A process is in a group at most once."""

from __future__ import annotations

from typing import Any

from ._native import native


def _group(group: str) -> str:
    if not isinstance(group, str):
        raise TypeError(f"a group name must be a str, not {type(group).__name__}")
    return group


def join(group: str, pid: Any = None) -> bool:
    """Adds ``pid`` (default: the calling process) to ``group``; false if already in it."""
    return native.pg_join(_group(group), pid if pid is not None else native.self_pid())


def leave(group: str, pid: Any = None) -> bool:
    """Removes ``pid`` (default: the caller) from ``group``; false if it was not in it."""
    return native.pg_leave(_group(group), pid if pid is not None else native.self_pid())


def members(group: str) -> list[Any]:
    """The members of ``group`` as this node last heard, in join order."""
    return native.pg_members(_group(group))


def which_groups() -> list[str]:
    """Every group with at least one member."""
    return native.pg_groups()


def broadcast(group: str, message: Any) -> int:
    """Sends ``message`` to every member; returns how many got it."""
    targets = members(group)
    for pid in targets:
        native.send(pid, message)
    return len(targets)
