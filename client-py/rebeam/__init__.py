"""Re:BEAM: Python actors with Erlang/OTP semantics.

Inside a node (``rebeam-node``) this package is the actor API: processes, GenServers,
supervisors, registries, tables and timers. See docs/guide.md. Outside a cluster,
``rebeam.connect(url, token=...)`` is the client that submits and inspects applications
(``rebeam.client``, docs/applications.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _cleanup, _errors, pg
from ._aio import call_async, receive_async, spawn_async
from ._errors import (
    AlreadyExists,
    AuthError,
    ControllerError,
    Error,
    Exit,
    Forbidden,
    InitError,
    InvalidRequest,
    NameTaken,
    NotFound,
    NotInNode,
    ProcessKilled,
    RateLimited,
    Refused,
    SpawnError,
    Timeout,
    TooLarge,
    Unavailable,
    UnknownName,
    controller_error,
)
from ._genserver import GenServer
from ._globals import nodes, register_global, unregister_global, whereis_global
from ._names import Dest, Name, NameRegistry, Via
from ._native import IN_NODE, native
from ._pid import Pid, Ref, Sender
from ._pool import Pool
from ._process import (
    call,
    cancel_timer,
    cast,
    demonitor,
    exit,
    is_alive,
    link,
    monitor,
    monitoring,
    noreply,
    process_info,
    processes,
    receive,
    register,
    registered,
    reply,
    run,
    self_pid,
    send,
    send_after,
    set_timeout,
    spawn,
    spawn_link,
    spawn_monitor,
    stop,
    trap_exits,
    trapping_exits,
    unlink,
    unregister,
    whereis,
)
from ._registry import KeyRegistry, registry
from ._remote import demonitor_node, monitor_node, node, spawn_on, spawn_on_async
from ._supervisor import (
    ChildSpec,
    DynamicSupervisor,
    Supervisor,
    child,
    start_child,
    start_child_async,
    terminate_child,
    which_children,
)
from ._table import Table, TableError, table
from ._types import NOREPLY, TIMEOUT, Crash, Down, Global, NodeDown, Reason

__all__ = [
    "IN_NODE", "NOREPLY", "TIMEOUT", "AlreadyExists", "AuthError", "ChildSpec", "Forbidden",
    "Client", "ControllerError", "Crash", "Dest", "Down", "DynamicSupervisor", "Error", "Exit",
    "GenServer", "Global", "InitError", "InvalidRequest", "KeyRegistry", "Name", "NameRegistry",
    "NameTaken", "NodeDown", "NotFound", "NotInNode", "Pid", "Pool", "Reason", "Ref",
    "RateLimited", "Refused", "Sender", "Supervisor", "Table", "SpawnError", "TableError",
    "Timeout", "TooLarge",
    "Unavailable", "UnknownName", "Via", "call", "call_async", "cancel_timer", "cast", "child",
    "connect",
    "demonitor", "demonitor_node", "exit", "is_alive", "link", "monitor", "monitor_node",
    "monitoring", "node", "nodes", "noreply", "pg", "process_info", "processes", "receive",
    "receive_async",
    "register", "register_global", "registered", "registry", "reply", "run", "self_pid", "send",
    "send_after", "set_timeout", "spawn", "spawn_async", "spawn_link", "spawn_monitor", "spawn_on",
    "spawn_on_async", "start_child", "start_child_async",
    "stop", "table", "terminate_child", "trap_exits", "trapping_exits", "unlink", "unregister",
    "unregister_global", "whereis", "whereis_global", "which_children"
]

if TYPE_CHECKING:
    from .client import Client, connect
elif IN_NODE:
    # No module-level __getattr__ in a node: CPython 3.11 does not specialise attribute loads
    # on a module that has one, and every `rebeam.cast(...)` would pay ~20 ns more for it.
    # The client still loads on the first `connect`; its class is `rebeam.client.Client`.
    from ._connect import connect

    __all__.remove("Client")
else:
    _CLIENT_NAMES = frozenset({"Client", "connect"})

    def __getattr__(name: str) -> Any:
        # The client (and gRPC behind it) loads on first use, so what imports rebeam alone
        # (a node's code installer, tools) does not pay for it.
        if name in _CLIENT_NAMES:
            from . import client

            return getattr(client, name)
        raise AttributeError(f"module 'rebeam' has no attribute {name!r}")


if IN_NODE:
    native._install({
        "Exit": Exit, "Down": Down, "Crash": Crash, "Timeout": Timeout, "Error": Error,
        "InitError": InitError, "UnknownName": UnknownName, "NameTaken": NameTaken,
        "ProcessKilled": ProcessKilled, "NOREPLY": NOREPLY, "TIMEOUT": TIMEOUT,
        "Global": Global, "Via": Via, "cleanup": _cleanup.cleanup, "controller_error": controller_error,
        "format_exception": _errors.format_exception,
    })
    from . import _output

    _output.install()
