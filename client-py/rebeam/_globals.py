"""Cluster-wide names (``Global``): held by the controller's replicated registry."""

from __future__ import annotations

from typing import Any

from ._errors import Error


def register_global(name: str, pid: Any) -> None:
    """Registers ``name`` cluster-wide for ``pid``."""
    raise Error(
        f"cannot register Global({name!r}): this node is not joined to a cluster controller; "
        "global names arrive with cluster mode"
    )


def whereis_global(name: str) -> Any:
    """The holder of the cluster-wide ``name``, or None."""
    raise Error(
        f"cannot look up Global({name!r}): this node is not joined to a cluster controller"
    )
