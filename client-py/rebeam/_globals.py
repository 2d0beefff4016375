"""Cluster-wide names (``Global``): held by the controller's replicated registry, cached on
every node from its watch stream."""

from __future__ import annotations

from typing import Any

from ._native import native


def register_global(name: str, pid: Any = None) -> None:
    """Registers ``name`` cluster-wide for ``pid`` (default: the calling process).

    Raises :class:`rebeam.NameTaken` (with the holder) if another process holds it. The
    name is released when the process exits or its node is declared dead; a name whose
    holder on this node just exited is waited for (up to 5 s) while its release travels."""
    from ._names import _register_global

    _register_global(name, pid if pid is not None else native.self_pid())


def unregister_global(name: str) -> None:
    """Releases a cluster-wide name."""
    native.unregister_global(name)


def whereis_global(name: str) -> Any:
    """The process holding the cluster-wide ``name``, or None."""
    return native.whereis_global(name)


def nodes() -> list[str]:
    """The names of the cluster's alive nodes, this one included, as this node sees them
    (from its cache of the controllers' watch stream), sorted."""
    others = {name for name, _incarnation, _address, alive in native.cluster_members() if alive}
    return sorted(others | {str(native.stats()["node"])})
