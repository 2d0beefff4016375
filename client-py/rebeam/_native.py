"""Access to the node's native module; outside a node the actor API raises NotInNode."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ._errors import NotInNode


class _Missing(ModuleType):
    """Stands in for ``_rebeam_native`` when this Python does not run inside a node."""

    def __getattr__(self, name: str) -> Any:
        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise NotInNode(
                f"rebeam.{name} needs a Re:BEAM node: run this code with "
                "`rebeam-node --dev --run SCRIPT` or inside an application"
            )

        return unavailable


try:
    import _rebeam_native as native  # type: ignore[import-not-found]

    IN_NODE = True
except ImportError:
    native = _Missing("_rebeam_native")
    IN_NODE = False
