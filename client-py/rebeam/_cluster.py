"""Cluster glue run by the node: unpack an application's code and start its top-level
children as the controller places them."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from ._process import spawn
from ._supervisor import register_name
from ._types import Global


def install_code(base_dir: str, app: str, code_hash: str, blob: bytes) -> str:
    """Checks and unpacks an app's code into ``base_dir/apps/app/code_hash`` (once); returns
    that directory. Each version gets its own directory, so versions never overwrite each
    other's files."""
    from .client.archive import unpack

    target = Path(base_dir) / "apps" / app / code_hash
    if not target.exists():
        unpack(blob, target, sha256=code_hash)
    return str(target)


def start_child(code_dir: str, start: str, args_json: str, name: str, is_global: bool) -> Any:
    """Imports ``module:attribute`` from ``code_dir`` and spawns it with the manifest's args;
    registers its local or global name. Returns the pid."""
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    module_name, _, attribute = start.partition(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attribute)
    args = json.loads(args_json) if args_json else []
    if not isinstance(args, list):
        args = [args]
    pid = spawn(target, *args)
    if name:
        register_name(Global(name) if is_global else name, pid)
    return pid
