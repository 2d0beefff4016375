"""Processes on other nodes: ``spawn_on`` (Erlang's ``spawn(Node, ...)``) and
``monitor_node``.

A target travels by name: its module (``target.__module__``) and qualified name
(``target.__qualname__``), imported on the other node; the arguments are pickled. So a target
must be a module-level function or a GenServer/Supervisor class of a module both nodes can
import: the app's own modules (an app's version is named the same on every node that loaded
it), installed packages, or the script run with ``--run`` (its ``__main__`` is imported from
the same path there)."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from typing import Any, Literal, overload

from ._errors import InitError, SpawnError, Timeout
from ._genserver import GenServer
from ._native import native
from ._pid import Pid, Ref
from ._types import Down, NodeDown

__all__ = ["NodeDown", "demonitor_node", "monitor_node", "node", "spawn_on", "spawn_on_async"]

#: The module name a `--run` script is imported under on the other nodes.
MAIN_ALIAS = "__rebeam_main__"


def node() -> str:
    """The name of this node (Erlang's ``node()``)."""
    return str(native.stats()["node"])


_this_node = node  # `spawn_on`'s parameter is named `node`, as in Erlang


def _wire_name(target: Any) -> tuple[str, str, str]:
    """``(module, qualname, main_path)`` naming ``target`` for another node."""
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<locals>" in qualname \
            or "<lambda>" in qualname:
        raise TypeError(f"spawn_on needs a module-level function or class, not {target!r}: "
                        "another node finds the target by module and name")
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not target:
        raise TypeError(f"spawn_on: {module}.{qualname} does not name {target!r} in its module")
    main_path = ""
    if module == "__main__":
        main_path = str(getattr(sys.modules["__main__"], "__file__", "") or "")
        if not main_path:
            raise TypeError("spawn_on: a target defined in an interactive __main__ cannot be "
                            "imported on another node; put it in a module")
    return module, qualname, main_path


def _import_main(path: str) -> Any:
    """The ``--run`` script at ``path`` imported as a module (its ``__main__`` guard stays
    false, so it defines its functions and classes without running its main code)."""
    loaded = sys.modules.get(MAIN_ALIAS)
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    spec = importlib.util.spec_from_file_location(MAIN_ALIAS, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MAIN_ALIAS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[MAIN_ALIAS]
        raise
    return module


def _peer_target(module: str, qualname: str, main_path: str) -> tuple[Any, bool]:
    """On the node asked to spawn: the target another node named, and whether it is a
    server class. Raises with a message saying what is missing."""
    if module == "__main__":
        found: Any = _import_main(main_path)
    else:
        try:
            found = importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f"cannot import module {module!r} here: {e}; the target's module "
                              "must be importable on both nodes (an app module, an installed "
                              "package)") from e
    for part in qualname.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AttributeError(f"module {module!r} has no attribute {qualname!r} here "
                                 "(a different version of the code?)") from None
    if inspect.isclass(found):
        if not issubclass(found, GenServer):
            raise TypeError(f"{module}.{qualname} is a class but not a rebeam.GenServer or "
                            "rebeam.Supervisor")
        return found, True
    if not callable(found):
        raise TypeError(f"{module}.{qualname} is not a function or a GenServer class")
    return found, False


@overload
def spawn_on(node: str, target: Callable[..., object] | type, *args: Any,
             link: bool = False, monitor: Literal[False] = False,
             timeout: float | None = 30.0, **kwargs: Any) -> Pid: ...
@overload
def spawn_on(node: str, target: Callable[..., object] | type, *args: Any,
             link: bool = False, monitor: Literal[True],
             timeout: float | None = 30.0, **kwargs: Any) -> tuple[Pid, Ref]: ...
def spawn_on(node: str, target: Callable[..., object] | type, *args: Any,  # noqa: E302
             link: bool = False, monitor: bool = False, timeout: float | None = 30.0,
             **kwargs: Any) -> Pid | tuple[Pid, Ref]:
    """Starts a process running ``target(*args, **kwargs)`` on the node named ``node``
    (Erlang's ``spawn(Node, ...)``); returns its pid, or ``(pid, ref)`` with ``monitor=True``.

    ``link=True`` links it to the caller and ``monitor=True`` monitors it, both in place
    before any of its code runs, so its exit (or its node's loss: ``noconnection``) is never
    missed. A GenServer's ``init`` runs before ``spawn_on`` returns; if it fails,
    :class:`rebeam.InitError` is raised. Raises :class:`rebeam.SpawnError` when ``node`` is
    not a live member or cannot import the target, :class:`rebeam.Timeout` after
    ``timeout`` seconds (the process may then still start, unlinked). On this node's own
    name it is a local spawn."""
    if node == _this_node():
        from ._process import _start

        return _start(target, args, kwargs, link, monitor)  # type: ignore[no-any-return]
    module, qualname, main_path = _wire_name(target)
    status, value = native.spawn_remote(node, module, qualname, main_path, args, kwargs or None,
                                        link, monitor, timeout)
    spawned: Pid | tuple[Pid, Ref] = _spawned(node, f"{module}.{qualname}", timeout, status,
                                              value)
    return spawned


def _spawned(node: str, target: str, timeout: float | None, status: str, value: Any) -> Any:
    """The pid (or ``(pid, ref)``) of a remote spawn's answer ``(status, value)``, or the
    matching exception."""
    if status == "ok":
        return value
    if status == "init_failed":
        raise InitError(None, value)
    if status == "timeout":
        raise Timeout(f"node {node!r} did not answer spawn_on within {timeout} s")
    if status == "lost":
        raise SpawnError(node, "the node was lost before it answered")
    if status == "no_node":
        raise SpawnError(node, str(value))
    raise SpawnError(node, f"cannot spawn {target} there:\n{value}")


@overload
async def spawn_on_async(node: str, target: Callable[..., object] | type, *args: Any,
                         link: bool = False, monitor: Literal[False] = False,
                         timeout: float | None = 30.0, **kwargs: Any) -> Pid: ...
@overload
async def spawn_on_async(node: str, target: Callable[..., object] | type, *args: Any,
                         link: bool = False, monitor: Literal[True],
                         timeout: float | None = 30.0, **kwargs: Any) -> tuple[Pid, Ref]: ...
async def spawn_on_async(node: str, target: Callable[..., object] | type,  # noqa: E302
                         *args: Any, link: bool = False, monitor: bool = False,
                         timeout: float | None = 30.0,
                         **kwargs: Any) -> Pid | tuple[Pid, Ref]:
    """``await``-able :func:`spawn_on` for async code: the same arguments, answer and
    errors, without blocking the event loop while the other node starts the process."""
    from ._aio import _check_loop, _resolved, _spawn_async

    loop = _check_loop("spawn_on_async")
    if node == _this_node():
        return await _spawn_async(target, args, kwargs, link, monitor)
    module, qualname, main_path = _wire_name(target)
    status, value = native._aio_spawn_remote(node, module, qualname, main_path, args,
                                             kwargs or None, link, monitor)
    if status == "pending":
        key, ticket = value
        try:
            async with asyncio.timeout(timeout):
                status, value = await _resolved(loop, key)
        except TimeoutError:
            ticket.abandon()
            status, value = "timeout", None
        except BaseException:
            ticket.abandon()
            raise
    spawned: Pid | tuple[Pid, Ref] = _spawned(node, f"{module}.{qualname}", timeout, status,
                                              value)
    return spawned


class NodeSentinel(GenServer):
    """An idle server on a watched node: its monitor firing with ``noconnection`` is how
    :func:`monitor_node` learns that the node is gone."""

    def init(self) -> None:
        pass


def _node_watcher(owner: Pid, watched: str) -> None:
    """Relays the loss of ``watched`` to ``owner`` as ``NodeDown``; ends with its owner or
    on ``demonitor_node``."""
    owner_ref = native.monitor(owner)
    while True:
        try:
            sentinel, ref = spawn_on(watched, NodeSentinel, monitor=True)
        except (SpawnError, Timeout):
            native.send(owner, NodeDown(watched))
            native.demonitor(owner_ref, True)
            return
        while True:
            message = native.receive(None, None)
            if isinstance(message, Down) and message.ref == owner_ref:
                native.exit(sentinel, "kill")
                return
            if message == "$stop":
                native.demonitor(owner_ref, True)
                native.exit(sentinel, "kill")
                return
            if isinstance(message, Down) and message.ref == ref:
                if message.reason == "noconnection":
                    native.send(owner, NodeDown(watched))
                    native.demonitor(owner_ref, True)
                    return
                break  # someone ended the sentinel: start another


def monitor_node(node: str) -> Pid:
    """Delivers ``rebeam.NodeDown(node)`` to the caller once, when ``node`` is lost (killed,
    cut off, or it left the cluster), or at once if it is not a live member (Erlang's
    ``monitor_node(Node, true)``). Returns a handle for :func:`demonitor_node`.

    It costs a small watcher process here and an idle server on the watched node."""
    me = native.self_pid()
    from ._process import _start

    pid: Pid = _start(_node_watcher, (me, node), {}, False, False)
    return pid


def demonitor_node(handle: Pid) -> None:
    """Stops a :func:`monitor_node` (a ``NodeDown`` already delivered stays queued)."""
    native.send(handle, "$stop")
