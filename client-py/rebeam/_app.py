"""Applications: a directory with a ``rebeam.toml`` manifest and its Python modules, run
under a root supervisor by ``rebeam-node --dev --app DIR``."""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import Error, Exit, InitError, Timeout, failed_child
from ._names import Name, Via
from ._native import native
from ._process import receive, spawn_link
from ._supervisor import RESTARTS, ChildSpec, Supervisor, child
from ._types import Crash, Global

MANIFEST = "rebeam.toml"
MASTER_NAME = "$app_master"
#: Keys of the manifest's [app] table and of each [[children]] entry; others are refused.
APP_KEYS = frozenset({"name", "version", "max_restarts", "max_seconds"})
CHILD_KEYS = frozenset({"start", "args", "name", "global", "restart", "shutdown", "placement",
                        "registry", "max_mailbox", "max_mailbox_bytes"})
#: Keys of a [[children]] entry that bound its mailbox (see rebeam.child).
MAILBOX_KEYS = ("max_mailbox", "max_mailbox_bytes")
#: Largest mailbox bound a manifest may give (as the controller: it only catches typos).
MAX_MAILBOX_BOUND = 1 << 48
#: App names: ASCII letters, digits, '_' and '-', starting with a letter or digit (no dots:
#: the name becomes part of module and directory names on the nodes).
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: Child names: ASCII letters, digits, '.', '_' and '-', starting with a letter or digit.
CHILD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


class ManifestError(Error):
    """The application's manifest is missing or wrong; the message names file and field."""


@dataclass(frozen=True)
class Manifest:
    """A parsed and checked ``rebeam.toml``."""

    directory: Path
    name: str
    version: str
    max_restarts: int
    max_seconds: float
    children: list[dict[str, Any]] = field(default_factory=list)


def _field(path: Path, table: dict[str, Any], key: str, kind: type | tuple[type, ...],
           where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ManifestError(f"{path}: {where}.{key} is required")
        return default
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(f"{path}: {where}.{key} must be {expected}, got {value!r}")
    return value


def _unknown_keys(path: Path, table: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ManifestError(f"{path}: unknown key {where}.{unknown[0]}; the keys of {where} are "
                            f"{', '.join(sorted(known))}")


def load_manifest(directory: str | Path) -> Manifest:
    """Reads and checks ``DIR/rebeam.toml``; errors name the file and the field."""
    directory = Path(directory).resolve()
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ManifestError(f"{directory}: not a directory")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; an application needs a {MANIFEST}") from None
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: invalid TOML: {e}") from None
    app = data.get("app")
    if not isinstance(app, dict):
        raise ManifestError(f"{path}: the [app] table is required")
    _unknown_keys(path, app, APP_KEYS, "app")
    name = _field(path, app, "name", str, "app")
    if not APP_NAME.fullmatch(name):
        raise ManifestError(f"{path}: app.name must be 1 to 64 ASCII letters, digits, '_' or '-', "
                            f"starting with a letter or digit, got {name!r}")
    version = _field(path, app, "version", str, "app")
    max_restarts = _field(path, app, "max_restarts", int, "app", 3)
    max_seconds = _field(path, app, "max_seconds", (int, float), "app", 5)
    if max_restarts < 0 or max_seconds <= 0:
        raise ManifestError(f"{path}: app.max_restarts must be >= 0 and app.max_seconds > 0")
    children = data.get("children", [])
    if not isinstance(children, list):
        raise ManifestError(f"{path}: children must be [[children]] tables, got {children!r}")
    if not children:
        raise ManifestError(f"{path}: at least one [[children]] entry is required")
    checked = []
    for i, entry in enumerate(children):
        where = f"children[{i}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}: {where} must be a table")
        _unknown_keys(path, entry, CHILD_KEYS, where)
        start = _field(path, entry, "start", str, where)
        child_name = _field(path, entry, "name", str, where, None)
        if child_name is not None and not CHILD_NAME.fullmatch(child_name):
            raise ManifestError(f"{path}: {where}.name must be 1 to 255 ASCII letters, digits, '.', "
                                f"'_' or '-', starting with a letter or digit, got {child_name!r}")
        if start.count(":") != 1 or not all(start.split(":")):
            raise ManifestError(f"{path}: {where}.start must be 'module:attribute', got {start!r}")
        restart = _field(path, entry, "restart", str, where, "permanent")
        if restart not in RESTARTS:
            raise ManifestError(f"{path}: {where}.restart must be one of {RESTARTS}, "
                                f"got {restart!r}")
        registry = _field(path, entry, "registry", str, where, None)
        if registry is not None:
            if registry.count(":") != 1 or not all(registry.split(":")):
                raise ManifestError(f"{path}: {where}.registry must be 'module:attribute', "
                                    f"got {registry!r}")
            if not entry.get("name") or entry.get("global"):
                raise ManifestError(f"{path}: {where}.registry needs a name (the key) and "
                                    "no global = true")
        limits = {key: _field(path, entry, key, int, where, None) for key in MAILBOX_KEYS}
        for key, limit in limits.items():
            if limit is not None and not 0 <= limit <= MAX_MAILBOX_BOUND:
                raise ManifestError(f"{path}: {where}.{key} must be 0 (unbounded) to "
                                    f"{MAX_MAILBOX_BOUND}, got {limit!r}")
        checked.append({
            **limits,
            "start": start,
            "registry": registry,
            "args": _field(path, entry, "args", list, where, []),
            "name": child_name,
            "global": _field(path, entry, "global", bool, where, False),
            "restart": restart,
            "shutdown": _field(path, entry, "shutdown", (int, float, str), where, None),
            "placement": _field(path, entry, "placement", str, where, "any"),
        })
    return Manifest(directory, name, version, max_restarts, float(max_seconds), checked)


def _resolve(manifest: Manifest, start: str, where: str) -> Any:
    module_name, attribute = start.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ManifestError(
            f"{manifest.directory / MANIFEST}: {where}.start: cannot import {module_name!r}: "
            f"{type(e).__name__}: {e}") from e
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ManifestError(f"{manifest.directory / MANIFEST}: {where}.start: module "
                            f"{module_name!r} has no attribute {attribute!r}") from None


def child_specs(manifest: Manifest) -> list[ChildSpec]:
    """The manifest's top-level children as supervisor child specs (imports their modules)."""
    if str(manifest.directory) not in sys.path:
        sys.path.insert(0, str(manifest.directory))
    specs = []
    for i, entry in enumerate(manifest.children):
        target = _resolve(manifest, entry["start"], f"children[{i}]")
        name = entry["name"]
        registered: Name | None = name
        if name and entry["global"]:
            registered = Global(name)
        elif name and entry["registry"]:
            registered = Via(_resolve(manifest, entry["registry"], f"children[{i}]"), name)
        # The manifest has no id field: a child is known by its name, else by its position.
        specs.append(child(target, entry["args"], id=name or f"children[{i}]",
                           name=registered,
                           restart=entry["restart"], shutdown=entry["shutdown"],
                           max_mailbox=entry["max_mailbox"],
                           max_mailbox_bytes=entry["max_mailbox_bytes"]))
    return specs


class AppSupervisor(Supervisor):
    """The root of an application: its top-level children, one_for_one, with the app's
    restart intensity."""

    def children(self, manifest: Manifest) -> list[ChildSpec]:
        self.max_restarts = manifest.max_restarts
        self.max_seconds = manifest.max_seconds
        return child_specs(manifest)


def _report_start_failure(name: str, error: InitError) -> None:
    """Prints why the application did not start: which child, the exception, its traceback."""
    path, reason = failed_child(error.reason)
    where = f" in child {' / '.join(repr(p) for p in path)}" if path else ""
    if isinstance(reason, Crash):
        print(f"rebeam: application {name} failed to start{where}: {reason.type}: "
              f"{reason.message}", file=sys.stderr)
        print(reason.traceback.rstrip(), file=sys.stderr)
    else:
        print(f"rebeam: application {name} failed to start{where}: {reason!r}", file=sys.stderr)
    sys.stderr.flush()


def _report_manifest_error(directory: str, error: ManifestError) -> None:
    """Prints a manifest or import problem, with the traceback of what caused it."""
    cause = error.__cause__
    if cause is not None:
        traceback.print_exception(cause, file=sys.stderr)
    print(f"rebeam: cannot start the application in {directory}: {error}", file=sys.stderr,
          flush=True)


def run_app(directory: str) -> int:
    """Starts the application and serves until asked to stop (an exit signal to the
    registered master) or until its root supervisor gives up; returns an exit status."""
    try:
        manifest = load_manifest(directory)
        child_specs(manifest)  # imports every module, so import errors are reported here
    except ManifestError as e:
        _report_manifest_error(directory, e)
        return 2
    native.trap_exits(True)
    native.register(MASTER_NAME, native.self_pid())
    try:
        # The tree belongs to the app, for `rebeam ps` and `rebeam logs`.
        root = native.spawn_as_app(manifest.name, spawn_link, AppSupervisor, manifest)
    except InitError as e:
        _report_start_failure(manifest.name, e)
        return 1
    print(f"rebeam: application {manifest.name} {manifest.version} started, root {root}",
          flush=True)
    me = native.self_pid()
    while True:
        message = receive(lambda m: isinstance(m, Exit))
        if message.pid == root:
            print(f"rebeam: application {manifest.name} stopped: {message.reason}",
                  file=sys.stderr, flush=True)
            return 1
        if message.pid == me:
            native.exit(root, "shutdown")
            receive(lambda m: isinstance(m, Exit) and m.pid == root)
            print(f"rebeam: application {manifest.name} shut down", flush=True)
            return 0


def run_submitted(directory: str, url: str, token: str) -> int:
    """``--app DIR`` on a dev node with worker nodes: submits the app to the embedded
    controller (as ``rebeam submit`` does), so its top-level children spread over the
    workers and ``rebeam tree``, ``upgrade`` and ``rollback`` work on it; serves until asked
    to stop (an exit signal to the registered master), then stops the app everywhere, or
    until the app fails. Returns an exit status."""
    from .client import AppFailed, connect

    try:
        manifest = load_manifest(directory)
    except ManifestError as e:
        _report_manifest_error(directory, e)
        return 2
    native.trap_exits(True)
    native.register(MASTER_NAME, native.self_pid())
    me = native.self_pid()
    with connect(url, token=token, timeout=30.0) as client:
        try:
            info = client.submit(directory, wait=120.0)
        except AppFailed as e:
            print(f"rebeam: application {manifest.name} failed to start: {e}", file=sys.stderr,
                  flush=True)
            return 1
        except Error as e:
            print(f"rebeam: cannot start the application in {directory}: {e}", file=sys.stderr,
                  flush=True)
            return 1
        placed = sorted({a.node for a in client.cluster().assignments
                         if a.app == info.name and a.node})
        print(f"rebeam: application {info.name} {info.version} started on "
              f"{', '.join(placed)} (submitted to {url})", flush=True)
        while True:
            try:
                message = receive(lambda m: isinstance(m, Exit) and m.pid == me, 0.5)
            except Timeout:
                status = client.app(info.name).status
                if status in ("stopped", "failed"):
                    print(f"rebeam: application {info.name} stopped: {status}", file=sys.stderr,
                          flush=True)
                    return 1
                continue
            del message
            client.stop(info.name, wait=60.0)
            print(f"rebeam: application {info.name} shut down", flush=True)
            return 0
