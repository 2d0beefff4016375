"""Application archives (see :mod:`rebeam._archive`, where they are implemented so that a
node can unpack code without importing the client)."""

from __future__ import annotations

from .._archive import (
    DEFAULT_MAX_BYTES,
    EXCLUDED_DIRS,
    EXCLUDED_FILES,
    EXCLUDED_SUFFIXES,
    MAX_COMPONENT_BYTES,
    MAX_FILES,
    MAX_NAME_BYTES,
    MAX_UNPACKED_BYTES,
    Archive,
    build,
    check_name,
    pack,
    read_manifest,
    unpack,
)
from .._errors import ArchiveError

__all__ = [
    "DEFAULT_MAX_BYTES", "EXCLUDED_DIRS", "EXCLUDED_FILES", "EXCLUDED_SUFFIXES",
    "MAX_COMPONENT_BYTES", "MAX_FILES", "MAX_NAME_BYTES", "MAX_UNPACKED_BYTES", "Archive",
    "ArchiveError", "build", "check_name", "pack", "read_manifest", "unpack",
]
