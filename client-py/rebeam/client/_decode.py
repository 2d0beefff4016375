"""Decoding values that nodes send back (replies, exit reasons) without running their code.

A pickle names the classes it rebuilds, and unpickling imports and calls them: a reply from a
compromised app could run code on the caller's machine. The client therefore rebuilds only
plain data, Re:BEAM's own values (pids, ``Exit``, ``Down``, ``Crash``, ``Global``) and the
classes or modules the caller trusts explicitly (``rebeam.connect(trusted_classes=...,
trusted_modules=...)``). Anything else raises :class:`UntrustedValue` naming the class.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterable
from typing import Any

from .._code import APP_MODULE_PREFIX
from ._errors import ControllerError

#: Classes any reply may hold: plain data beyond pickle's built-in opcodes, and Re:BEAM's values.
SAFE_CLASSES: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
    ("builtins", "complex"), ("builtins", "range"), ("builtins", "slice"),
    ("collections", "OrderedDict"), ("collections", "deque"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "time"),
    ("datetime", "timedelta"), ("datetime", "timezone"),
    ("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"),
    ("rebeam._pid", "Pid"), ("rebeam._pid", "Ref"),
    # How a node pickles its own pids and refs (they rebuild plain Pid and Ref values here).
    ("rebeam._pid", "restore_pid"), ("rebeam._pid", "restore_ref"),
    ("rebeam._types", "Crash"), ("rebeam._types", "Down"), ("rebeam._types", "Global"),
    ("rebeam._errors", "Exit"),
})


class UntrustedValue(ControllerError):
    """A reply held an instance of a class the client was not told to trust."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(
            f"the reply holds a {module}.{name}, which this client does not trust to rebuild; "
            f"pass it in rebeam.connect(trusted_classes=[...]) or its module in "
            f"trusted_modules=[...] if you trust the app that sent it", "UNTRUSTED_VALUE")
        self.module = module
        self.name = name


class Trust:
    """Which classes beyond :data:`SAFE_CLASSES` replies may rebuild."""

    def __init__(self, classes: Iterable[type] = (), modules: Iterable[str] = ()) -> None:
        self.classes = frozenset((c.__module__, c.__qualname__) for c in classes)
        self.modules = tuple(modules)

    def allows(self, module: str, name: str) -> bool:
        """Whether ``module.name`` may be rebuilt."""
        if (module, name) in SAFE_CLASSES or (module, name) in self.classes:
            return True
        return any(module == m or module.startswith(m + ".") for m in self.modules)


class _Unpickler(pickle.Unpickler):
    """Refuses classes the caller does not trust. Classes of an app version's module namespace
    (``_rebeam_app_<app>_<hash>.m``, how nodes load app code) are looked up as the plain module
    ``m``, so a client that has the app's modules on its path can read the app's own classes."""

    def __init__(self, data: bytes, trust: Trust) -> None:
        super().__init__(io.BytesIO(data))
        self._trust = trust

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(APP_MODULE_PREFIX):
            module = module.partition(".")[2] or module
        if not self._trust.allows(module, name):
            raise UntrustedValue(module, name)
        return super().find_class(module, name)


# The opcodes through which a pickle gets hold of anything callable: GLOBAL (c), INST (i),
# STACK_GLOBAL and EXT1/2/4 all go through ``find_class``; every other way to call or build
# an object (REDUCE, OBJ, NEWOBJ, BUILD) needs a class that one of them put on the stack.
_FINDS_CLASS = re.compile(rb"[ci\x82\x83\x84\x93]")


def loads(data: bytes, trust: Trust) -> Any:
    """A value from the wire, rebuilding only classes ``trust`` allows."""
    if _FINDS_CLASS.search(data) is None:
        # No byte of the pickle could be an opcode that looks up a class (a byte that only
        # looks like one sends the value the careful way): plain data, which the C unpickler
        # rebuilds without the restricted one's per-value setup.
        return pickle.loads(data)
    return _Unpickler(data, trust).load()
