"""Process groups: named sets of processes, for fan-out and pools.

Members leave their groups automatically when they exit. On a single node the groups are
the node's; in a cluster they span every node (see docs/semantics.md)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from . import _cleanup
from ._native import native

_groups: dict[Hashable, list[Any]] = {}


def join(group: Hashable, pid: Any = None) -> None:
    """Adds ``pid`` (default: the calling process) to ``group``; a process may join twice."""
    member = native.mark_cleanup(pid) if pid is not None else native.mark_cleanup()
    _groups.setdefault(group, []).append(member)


def leave(group: Hashable, pid: Any = None) -> bool:
    """Removes one membership of ``pid`` (default: the caller); false if it was not in it."""
    member = pid if pid is not None else native.self_pid()
    members = _groups.get(group, [])
    if member not in members:
        return False
    members.remove(member)
    if not members:
        _groups.pop(group, None)
    return True


def members(group: Hashable) -> list[Any]:
    """The members of ``group`` (a pid appears once per join)."""
    return list(_groups.get(group, ()))


def which_groups() -> list[Hashable]:
    """Every group with at least one member."""
    return list(_groups)


def broadcast(group: Hashable, message: Any) -> int:
    """Sends ``message`` to each distinct member; returns how many got it."""
    targets = list(dict.fromkeys(_groups.get(group, ())))
    for pid in targets:
        native.send(pid, message)
    return len(targets)


@_cleanup.on_exit
def _member_exited(pid: Any) -> None:
    for group in [g for g, m in _groups.items() if pid in m]:
        remaining = [p for p in _groups[group] if p != pid]
        if remaining:
            _groups[group] = remaining
        else:
            del _groups[group]
