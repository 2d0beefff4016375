"""Access to the node's native module; outside a node the actor API raises NotInNode."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from ._errors import NotInNode

__all__ = ["IN_NODE", "native"]


class _Missing(ModuleType):
    """Stands in for ``_rebeam_native`` when this Python does not run inside a node."""

    def __getattr__(self, name: str) -> Any:
        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise NotInNode(
                f"rebeam.{name} needs a Re:BEAM node: run this code with "
                "`rebeam-node --dev --run SCRIPT` or inside an application"
            )

        return unavailable


if TYPE_CHECKING:
    # The stub (rebeam/_rebeam_native.pyi) types the native module's functions.
    from . import _rebeam_native as native

    IN_NODE: bool
else:
    try:
        import _rebeam_native as native

        IN_NODE = True
    except ImportError:
        native = _Missing("_rebeam_native")
        IN_NODE = False
