"""Application code versions inside a node: each version of an app is imported under its own
module prefix, so two versions live in one interpreter without replacing each other's
modules, and running servers move from one version to the next through ``code_change``.

A version's modules are imported as ``<prefix>.<module>`` (the prefix is a synthetic package
whose path is the version's directory). An import statement in a version's module that names
one of the app's own top-level modules (``import rooms``, ``from rooms import Room``) is sent
to the same version by a wrapper around ``builtins.__import__``, installed when the first app
version loads; imports of anything else are untouched."""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import inspect
import re
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: How the module namespaces of app versions begin.
APP_MODULE_PREFIX = "_rebeam_app_"
_lock = threading.RLock()
_versions: dict[str, Version] = {}  # by prefix
_current: dict[str, Version] = {}  # by app name
_history: dict[str, list[Version]] = {}  # by app name: the versions made current, oldest first
_extra: dict[str, str | None] = {}  # by app name: what code_change gets as `extra`
_original_import = builtins.__import__


@dataclass(eq=False)
class Version:
    """One loaded version of an app."""

    app: str
    version: str
    code_hash: str
    directory: Path
    prefix: str
    top: frozenset[str] = field(default_factory=frozenset)

    def module(self, name: str) -> types.ModuleType:
        """Imports the app module ``name`` (dotted names allowed) of this version."""
        if name.partition(".")[0] not in self.top:
            raise ImportError(f"app {self.app} {self.version} has no module {name!r} "
                              f"(its modules: {', '.join(sorted(self.top)) or 'none'})")
        return importlib.import_module(f"{self.prefix}.{name}")

    def resolve(self, start: str) -> Any:
        """The object a manifest's ``module:attribute`` names in this version."""
        module_name, _, attribute = start.partition(":")
        target: Any = self.module(module_name)
        for part in attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise AttributeError(f"app {self.app} {self.version}: module {module_name!r} "
                                     f"has no attribute {attribute!r}") from None
        return target

    def owns(self, obj: Any) -> bool:
        """True when ``obj`` (a class or function) was defined by this version's code."""
        module = getattr(obj, "__module__", None) or ""
        return module == self.prefix or module.startswith(self.prefix + ".")

    def counterpart(self, obj: Any, old: Version) -> Any:
        """The object of this version with the same module and qualified name as ``obj`` of
        version ``old``; ``obj`` itself when it is not app code."""
        if not old.owns(obj):
            return obj
        module_name = obj.__module__[len(old.prefix) + 1:]
        target: Any = self.module(module_name)
        for part in obj.__qualname__.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise LookupError(f"{module_name}.{obj.__qualname__} no longer exists in "
                                  f"{self.app} {self.version}")
        return target


def _prefix(app: str, code_hash: str) -> str:
    return f"{APP_MODULE_PREFIX}{re.sub(r'[^A-Za-z0-9]', '_', app)}_{code_hash[:16]}"


def _top_level(directory: Path) -> frozenset[str]:
    names = set()
    for entry in directory.iterdir():
        if entry.suffix == ".py" and entry.stem.isidentifier():
            names.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").exists() and entry.name.isidentifier():
            names.add(entry.name)
    return frozenset(names)


def load(app: str, version: str, code_hash: str, directory: str, modules: list[str]) -> Version:
    """Loads (once) the version of ``app`` unpacked in ``directory`` and imports ``modules``
    from it, so an import error surfaces now rather than at a process's next message."""
    with _lock:
        prefix = _prefix(app, code_hash)
        loaded = _versions.get(prefix)
        created = loaded is None
        if loaded is None:
            path = Path(directory)
            package = types.ModuleType(prefix, f"app {app} {version}")
            package.__path__ = [str(path)]
            package.__package__ = prefix
            package.__spec__ = importlib.machinery.ModuleSpec(prefix, None, is_package=True)
            package.__spec__.submodule_search_locations = [str(path)]
            loaded = Version(app, version, code_hash, path, prefix, _top_level(path))
            sys.modules[prefix] = package
            _versions[prefix] = loaded
            builtins.__import__ = _import
        try:
            for name in modules:
                loaded.module(name)
        except BaseException:
            if created:  # a version processes may already run is never dropped
                _forget(loaded)
            raise
        return loaded


def _forget(version: Version) -> None:
    """Drops a version that failed to load, so a fixed archive with the same hash is never
    assumed loaded and the half-imported modules do not linger."""
    _versions.pop(version.prefix, None)
    for name in [n for n in sys.modules if n == version.prefix or n.startswith(version.prefix + ".")]:
        del sys.modules[name]


def make_current(version: Version, *, fresh: bool = False) -> Version | None:
    """Makes ``version`` the one new and upgraded processes of its app use; returns the
    version it replaces. Going back to the version that was current before the current one
    is a rollback: ``code_change`` then gets ``extra="rollback"``. ``fresh`` starts the
    app's history over (a first start here, or a submit after a stop)."""
    with _lock:
        previous = _current.get(version.app)
        if fresh:
            _history.pop(version.app, None)
        history = _history.setdefault(version.app, [])
        if len(history) >= 2 and history[-2] is version:
            history.pop()
            _extra[version.app] = "rollback"
        else:
            history.append(version)
            _extra[version.app] = None
        _current[version.app] = version
        return previous


def current(app: str) -> Version | None:
    """The version of ``app`` processes move to, if the app was loaded here."""
    return _current.get(app)


def loaded(app: str, code_hash: str) -> Version | None:
    """The loaded version ``code_hash`` of ``app``, if it is loaded."""
    return _versions.get(_prefix(app, code_hash))


def version_of(obj: Any) -> Version | None:
    """The app version whose code defined ``obj``'s class (or ``obj``, for a class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return _versions.get((getattr(cls, "__module__", None) or "").partition(".")[0])


def move_server(server: Any, app: str) -> bool:
    """Moves a server to its app's current version by swapping its class for the class of
    the same name in that version. On an upgrade the new code's ``code_change(old_version,
    None)`` converts the state afterwards; on a rollback the code being left converts it
    first, with ``code_change(version_returned_to, "rollback")``, since only the newer code
    knows both state formats (OTP's ``{down, Vsn}``). If ``code_change`` raises the server
    keeps its old class and state and the exception propagates. Returns True when the
    server moved, False when it already runs the current code (or none of the app's)."""
    from ._supervisor import Supervisor

    new = _current.get(app)
    old = version_of(server)
    if new is None or old is None or old is new:
        return False
    old_class = type(server)
    new_class = new.counterpart(old_class, old)
    rollback = _extra.get(app) == "rollback"
    saved = None
    try:
        if rollback:
            _code_change(server, new.version, "rollback")
        server.__class__ = new_class
        if isinstance(server, Supervisor):
            saved = server._move_children(lambda start: new.counterpart(start, old))
        if not rollback:
            _code_change(server, old.version, None)
    except BaseException:
        server.__class__ = old_class
        if saved is not None:
            server._children = saved
        raise
    return True


def _code_change(server: Any, version: str, extra: Any) -> None:
    result = server.code_change(version, extra)
    if inspect.iscoroutine(result):
        result.close()
        raise TypeError(
            f"{type(server).__qualname__}.code_change is async: an upgrade converts the state "
            "between two messages, with nothing awaited; define it with a plain def")


def describe(code: Any) -> tuple[str, str] | None:
    """``(module.qualname, version)`` of an app's class or function, with the module named
    as in the app (without its version's namespace); None for code that is not an app's."""
    version = version_of(code) if isinstance(code, type) else _versions.get(
        (getattr(code, "__module__", None) or "").partition(".")[0])
    if version is None:
        return None
    module = code.__module__[len(version.prefix) + 1:]
    return f"{module}.{code.__qualname__}", version.version


def _import(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (),
            level: int = 0) -> Any:
    if level == 0 and globals:
        importer = globals.get("__name__")
        if importer and importer.startswith(APP_MODULE_PREFIX):
            version = _versions.get(importer.partition(".")[0])
            top = name.partition(".")[0]
            if version is not None and top in version.top:
                module = _original_import(f"{version.prefix}.{name}", globals, locals, fromlist, 0)
                return module if fromlist else sys.modules[f"{version.prefix}.{top}"]
    return _original_import(name, globals, locals, fromlist, level)
