"""Checks a manifest against what the controller accepts, beyond what
:func:`rebeam._app.load_manifest` (shared with the dev node) already checks.

The controller checks all of this again (it never trusts the client); checking here first
turns a round trip into an error that names the file and the field."""

from __future__ import annotations

import importlib.util
import re
import tomllib
import unicodedata
from collections.abc import Set
from typing import Any

from .._app import MANIFEST, Manifest, ManifestError

#: Largest manifest the controller accepts, in bytes.
MAX_MANIFEST_BYTES = 64 * 1024
#: Most top-level children in one app.
MAX_CHILDREN = 256
#: Longest child (local or global) name, in UTF-8 bytes.
MAX_NAME_BYTES = 255
_IDENT = re.compile(r"^[A-Za-z0-9._+-]{1,64}$")
_TOP_LEVEL = frozenset({"app", "children"})


def _module_file(module: str, names: Set[str]) -> bool:
    path = module.replace(".", "/")
    return f"{path}.py" in names or f"{path}/__init__.py" in names


def check_manifest(manifest: Manifest, text: str, names: Set[str]) -> None:
    """Raises :class:`ManifestError` for what the controller would refuse, and for a child
    whose module is neither in the app (``names`` are the archive's file names) nor
    importable here."""
    path = manifest.directory / MANIFEST
    size = len(text.encode("utf-8"))
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: the manifest is {size} bytes; the limit is {MAX_MANIFEST_BYTES}")
    raw: dict[str, Any] = tomllib.loads(text)
    for key in raw:
        if key not in _TOP_LEVEL:
            raise ManifestError(f"{path}: unknown top-level key {key!r}; only [app] and "
                                "[[children]] are allowed")
    app = raw["app"]
    if not _IDENT.match(manifest.name):
        raise ManifestError(f"{path}: app.name must be 1 to 64 ASCII letters, digits, '.', '_', '-' "
                            f"or '+', got {manifest.name!r}")
    if not _IDENT.match(manifest.version):
        raise ManifestError(f"{path}: app.version must be 1 to 64 ASCII letters, digits, '.', '_', "
                            f"'-' or '+', got {manifest.version!r}")
    if manifest.max_restarts > 10_000:
        raise ManifestError(f"{path}: app.max_restarts must be at most 10000, got {manifest.max_restarts}")
    seconds = app.get("max_seconds", 5)
    if not isinstance(seconds, int) or not 1 <= seconds <= 86_400:
        raise ManifestError(f"{path}: app.max_seconds must be a whole number of seconds from 1 to "
                            f"86400, got {seconds!r}")
    if len(manifest.children) > MAX_CHILDREN:
        raise ManifestError(f"{path}: the app has {len(manifest.children)} children; use at most "
                            f"{MAX_CHILDREN}")
    ids: dict[str, int] = {}
    for i, child in enumerate(manifest.children):
        where = f"children[{i}]"
        name = child["name"] or ""
        if child["global"] and not name:
            raise ManifestError(f"{path}: {where}.global = true needs a {where}.name")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ManifestError(f"{path}: {where}.name is over {MAX_NAME_BYTES} bytes")
        if any(unicodedata.category(c) == "Cc" for c in name):
            raise ManifestError(f"{path}: {where}.name contains control characters")
        child_id = name or f"child-{i}"
        if child_id in ids:
            raise ManifestError(f"{path}: {where}.name {child_id!r} is already used by "
                                f"children[{ids[child_id]}]; names must be unique within the app")
        ids[child_id] = i
        placement = child["placement"]
        if placement not in ("any", "spread"):
            key, sep, value = placement.partition("=")
            if not (sep and key and value):
                raise ManifestError(f"{path}: {where}.placement must be \"any\", \"spread\" or "
                                    f"\"label=value\", got {placement!r}")
        module = child["start"].split(":")[0]
        if not all(part.isidentifier() for part in module.split(".")):
            # Nothing could import it, and import machinery fails on such names in its own
            # ways (an empty top-level name, a relative one): say what is wrong instead.
            raise ManifestError(f"{path}: {where}.start: {module!r} is not a module name "
                                "(Python identifiers joined by '.')")
        top = module.split(".")[0]
        in_app = _module_file(top, names)
        if in_app and not _module_file(module, names):
            raise ManifestError(f"{path}: {where}.start: module {module!r} is not in the app "
                                f"(no {module.replace('.', '/')}.py)")
        if not in_app and importlib.util.find_spec(top) is None:
            raise ManifestError(f"{path}: {where}.start: module {module!r} is neither in the app "
                                "directory nor installed")
