"""``rebeam.connect`` inside a node, where the client loads on first use (see ``__init__``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client


def connect(*args: Any, **kwargs: Any) -> Client:
    """Connects to a cluster's controller: ``rebeam.client.connect``, imported now."""
    from .client import connect as client_connect

    return client_connect(*args, **kwargs)
