"""Cluster glue run by the node: unpack and load an application's code versions and start
its top-level children as the controller places them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import _code
from ._names import Via, register_name
from ._process import _start
from ._types import Global


def install_code(base_dir: str, app: str, code_hash: str, blob: bytes) -> str:
    """Checks and unpacks an app's code into ``base_dir/apps/app/code_hash`` (once); returns
    that directory. Each version gets its own directory, so versions never overwrite each
    other's files."""
    from ._archive import unpack

    target = Path(base_dir) / "apps" / app / code_hash
    if not target.exists():
        unpack(blob, target, sha256=code_hash)
    return str(target)


def load_version(base_dir: str, app: str, version: str, code_hash: str, blob: bytes,
                 modules: list[str], fresh: bool) -> None:
    """Unpacks and imports a version of ``app`` beside its other versions and makes it the
    one new processes start from and running servers move to; ``fresh`` when no version of
    the app ran here before (or it was stopped since)."""
    directory = install_code(base_dir, app, code_hash, blob)
    _code.make_current(_code.load(app, version, code_hash, directory, modules), fresh=fresh)


def start_child(app: str, code_hash: str, start: str, args_json: str, name: str,
                is_global: bool) -> Any:
    """Spawns ``module:attribute`` of the loaded version ``code_hash`` of ``app`` with the
    manifest's args; registers its local or global name. Returns the pid."""
    version = _code.loaded(app, code_hash)
    if version is None:
        raise RuntimeError(f"app {app}: code {code_hash[:12]} is not loaded on this node")
    target = version.resolve(start)
    args = json.loads(args_json) if args_json else []
    if not isinstance(args, list):
        args = [args]
    entry = _manifest_entry(version, start, name)
    registry = None
    if not is_global and name and isinstance(entry.get("registry"), str):
        registry = version.resolve(entry["registry"])
    # The controller passes only what placement needs; limits come from the version's own
    # manifest, which the controller checked at submit.
    limits = [entry.get(key) if isinstance(entry.get(key), int) else None
              for key in ("max_mailbox", "max_mailbox_bytes")]
    pid = _start(target, tuple(args), {}, False, False, *limits)
    if name:
        if registry is not None:
            register_name(Via(registry, name), pid)
        else:
            register_name(Global(name) if is_global else name, pid)
    return pid


def _manifest_entry(version: _code.Version, start: str, name: str) -> dict[str, Any]:
    """The [[children]] entry of the version's own manifest for the child ``start``/``name``
    (empty when there is none)."""
    import tomllib

    try:
        manifest = tomllib.loads((version.directory / "rebeam.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    for entry in manifest.get("children", []):
        if isinstance(entry, dict) and entry.get("start") == start and (
                entry.get("name") or "") == name:
            return entry
    return {}
