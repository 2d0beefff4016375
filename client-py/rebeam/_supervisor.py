"""Supervisors: start children in order, restart them by strategy, stop them in reverse."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ._errors import Exit, InitError, SpawnError, Timeout
from ._genserver import GenServer
from ._names import Name, Via, register_name
from ._native import native
from ._process import call
from ._types import Global

Restart = Literal["permanent", "transient", "temporary"]
Shutdown = float | int | Literal["brutal_kill", "infinity"] | None
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one")
RESTARTS = ("permanent", "transient", "temporary")
DEFAULT_SHUTDOWN = 5.0


@dataclass(frozen=True)
class ChildSpec:
    """How a supervisor starts, names, restarts and stops one child."""

    start: Callable[..., Any] | type
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: Any = None
    name: Name | None = None
    restart: Restart = "permanent"
    shutdown: Shutdown = None
    max_mailbox: int | None = None
    max_mailbox_bytes: int | None = None
    node: str | None = None

    @property
    def is_supervisor(self) -> bool:
        return isinstance(self.start, type) and issubclass(self.start, Supervisor)

    @property
    def shutdown_policy(self) -> float | str:
        if self.shutdown is None:
            return "infinity" if self.is_supervisor else DEFAULT_SHUTDOWN
        return self.shutdown


def child(start: Callable[..., Any] | type, args: tuple[Any, ...] | list[Any] = (), *,
          kwargs: dict[str, Any] | None = None, id: Any = None,
          name: Name | None = None, restart: Restart = "permanent",
          shutdown: Shutdown = None, max_mailbox: int | None = None,
          max_mailbox_bytes: int | None = None, node: str | None = None) -> ChildSpec:
    """A child specification: ``start`` is a GenServer/Supervisor class or a function.

    ``shutdown`` is seconds to wait after the ``shutdown`` signal before killing (default
    5), ``"brutal_kill"``, or ``"infinity"`` (the default for supervisors).
    ``max_mailbox`` (messages) and ``max_mailbox_bytes`` bound the child's mailbox (the
    node's defaults when None, unbounded when 0): a delivery past either kills the child with
    reason ``"mailbox_limit"`` and this supervisor restarts it as for any other exit.
    ``node`` starts (and restarts) the child on that node of the cluster with
    :func:`rebeam.spawn_on`, linked to the supervisor across nodes; a restart while the node
    is gone fails and counts toward the restart intensity."""
    _check_node(name, node)
    return ChildSpec(start, tuple(args), dict(kwargs or {}), id, name, restart, shutdown,
                     max_mailbox, max_mailbox_bytes, node)


def _check_node(name: Name | None, node: str | None) -> None:
    if node is not None and name is not None and not isinstance(name, Global):
        raise ValueError(f"a child on node {node!r} can only have a rebeam.Global name "
                         f"(local names hold this node's processes), got {name!r}")


def _validate(spec: Any, where: str) -> ChildSpec:
    if not isinstance(spec, ChildSpec):
        raise TypeError(f"{where}: expected rebeam.child(...), got {type(spec).__name__}")
    if not callable(spec.start):
        raise TypeError(f"{where}: field 'start' must be a class or function, got {spec.start!r}")
    if spec.restart not in RESTARTS:
        raise ValueError(f"{where}: field 'restart' must be one of {RESTARTS}, "
                         f"got {spec.restart!r}")
    policy = spec.shutdown
    if policy is not None and policy not in ("brutal_kill", "infinity") and not (
        isinstance(policy, int | float) and not isinstance(policy, bool) and policy >= 0
    ):
        raise ValueError(f"{where}: field 'shutdown' must be seconds >= 0, 'brutal_kill' or "
                         f"'infinity', got {policy!r}")
    for key in ("max_mailbox", "max_mailbox_bytes"):
        limit = getattr(spec, key)
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise ValueError(f"{where}: field {key!r} must be an int >= 0 (0: unbounded) or "
                             f"None (the node's default), got {limit!r}")
    if spec.name is not None and not isinstance(spec.name, str | Global | Via):
        raise TypeError(f"{where}: field 'name' must be a str, Global or Via, got {spec.name!r}")
    checked: ChildSpec = spec
    if checked.id is None:
        checked = replace(checked, id=checked.name if checked.name is not None
                          else _default_id(checked))
    return checked


def _default_id(spec: ChildSpec) -> str:
    start = spec.start
    return f"{getattr(start, '__module__', '?')}.{getattr(start, '__qualname__', repr(start))}"


@dataclass
class _Child:
    spec: ChildSpec
    pid: Any = None
    # Times this child was started again after its first start (by its exit or a sibling's).
    restarts: int = 0


class Supervisor(GenServer):
    """A process that starts children and restarts them when they exit.

    Set ``strategy`` (``one_for_one``, ``one_for_all``, ``rest_for_one``, or
    ``simple_one_for_one`` for dynamic children only), ``max_restarts`` in ``max_seconds``
    (beyond which the supervisor stops its children and exits with ``shutdown``), and
    return the child specs from ``children(*args)``."""

    strategy: str = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0

    def children(self, *args: Any, **kwargs: Any) -> list[ChildSpec]:
        """The static children, started in order."""
        return []

    def init(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self).__qualname__
        if self.strategy not in STRATEGIES:
            raise ValueError(f"{cls}: field 'strategy' must be one of {STRATEGIES}, "
                             f"got {self.strategy!r}")
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"{cls}: field 'max_restarts' must be an int >= 0, "
                             f"got {self.max_restarts!r}")
        if not isinstance(self.max_seconds, int | float) or self.max_seconds <= 0:
            raise ValueError(f"{cls}: field 'max_seconds' must be seconds > 0, "
                             f"got {self.max_seconds!r}")
        specs = [_validate(s, f"{cls} child {i}") for i, s in
                 enumerate(self.children(*args, **kwargs))]
        ids = [s.id for s in specs]
        duplicate = next((i for i in ids if ids.count(i) > 1), None)
        if duplicate is not None:
            raise ValueError(f"{cls}: two children have the id {duplicate!r}; ids must differ")
        if self.strategy == "simple_one_for_one" and specs:
            raise ValueError(f"{cls}: a simple_one_for_one supervisor starts with no children; "
                             "add them with rebeam.start_child")
        native.trap_exits(True)
        self._children: list[_Child] = []
        self._restarts: deque[float] = deque()
        for spec in specs:
            try:
                self._children.append(_Child(spec, self._start(spec)))
            except InitError as e:
                # As OTP: the start fails with {shutdown, {failed_to_start_child, Id, Reason}}.
                self._stop_all()
                native.stop(("shutdown", ("failed_to_start_child", spec.id, e.reason)))
                raise
            except BaseException:
                self._stop_all()
                raise

    # -- starting and stopping children -------------------------------------------------

    def _start(self, spec: ChildSpec) -> Any:
        from ._process import _start
        from ._remote import node, spawn_on

        if spec.node is not None and spec.node != node():
            try:
                pid = spawn_on(spec.node, spec.start, *spec.args, link=True, **spec.kwargs)
            except SpawnError as e:
                raise InitError(None, ("spawn_error", spec.node, str(e))) from e
        else:
            pid = _start(spec.start, spec.args, spec.kwargs, True, False, spec.max_mailbox,
                         spec.max_mailbox_bytes)
        if spec.name is not None:
            register_name(spec.name, pid)
        return pid

    def _move_children(self, translate: Callable[[Any], Any]) -> list[_Child]:
        """Points each child spec's ``start`` at the code ``translate`` gives (the app's
        new version, on a hot upgrade), so restarts run the new code; returns the old list."""
        saved = self._children
        self._children = [_Child(replace(c.spec, start=translate(c.spec.start)), c.pid,
                                 c.restarts) for c in saved]
        return saved

    def _stop_child(self, entry: _Child) -> None:
        pid, entry.pid = entry.pid, None
        if pid is None:
            return
        policy = entry.spec.shutdown_policy

        def exited(message: Any) -> bool:
            return isinstance(message, Exit) and message.pid == pid

        if policy == "brutal_kill":
            native.exit(pid, "kill")
            native.receive(exited, None)
            return
        native.exit(pid, "shutdown")
        try:
            native.receive(exited, None if policy == "infinity" else float(policy))
        except Timeout:
            native.exit(pid, "kill")
            native.receive(exited, None)

    def _stop_all(self, entries: list[_Child] | None = None) -> None:
        for entry in reversed(entries if entries is not None else self._children):
            self._stop_child(entry)

    # -- restarts ---------------------------------------------------------------------------

    def handle_info(self, message: Any) -> None:
        if not isinstance(message, Exit):
            return
        index = next((i for i, c in enumerate(self._children) if c.pid == message.pid), None)
        if index is None:
            return
        entry = self._children[index]
        entry.pid = None
        if not self._should_restart(entry.spec, message.reason):
            if entry.spec.restart == "temporary" or self.strategy == "simple_one_for_one":
                del self._children[index]
            return
        self._restart_from(index)

    @staticmethod
    def _should_restart(spec: ChildSpec, reason: Any) -> bool:
        if spec.restart == "permanent":
            return True
        if spec.restart == "temporary":
            return False
        return not (reason in ("normal", "shutdown")
                    or (isinstance(reason, tuple) and len(reason) == 2
                        and reason[0] == "shutdown"))

    def _intensity_exceeded(self) -> bool:
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > self.max_seconds:
            self._restarts.popleft()
        return len(self._restarts) > self.max_restarts

    def _restart_from(self, index: int) -> None:
        if self._intensity_exceeded():
            self._stop_all()
            native.stop("shutdown")
            return
        if self.strategy == "one_for_all":
            group = list(range(len(self._children)))
        elif self.strategy == "rest_for_one":
            group = list(range(index, len(self._children)))
        else:
            group = [index]
        native.note_restart()
        self._stop_all([self._children[i] for i in group if i != index])
        # Temporary siblings are stopped but never restarted, even by a sibling's failure.
        restart = [self._children[i] for i in group
                   if i == index or self._children[i].spec.restart != "temporary"]
        self._children = [c for i, c in enumerate(self._children)
                          if i not in group or c in restart]
        for entry in restart:
            entry.restarts += 1
            try:
                entry.pid = self._start(entry.spec)
            except InitError:
                # A failed start counts as another restart: retry until the intensity is spent.
                self._restart_from(self._children.index(entry))
                return

    def terminate(self, reason: Any) -> None:
        self._stop_all()

    def _report(self) -> tuple[str, int, float, int, list[tuple[str, Any, int, str]]]:
        """What the dashboard's tree shows of this supervisor (read by the node's inspector):
        strategy, intensity (``max_restarts`` in ``max_seconds``), restarts in the current
        window, and ``(repr(id), pid or None, restarts, kind)`` per child."""
        now = time.monotonic()
        used = sum(1 for t in list(getattr(self, "_restarts", ())) if now - t <= self.max_seconds)
        children = [(repr(c.spec.id), c.pid, c.restarts,
                     "supervisor" if c.spec.is_supervisor else "worker")
                    for c in list(getattr(self, "_children", []))]
        return (self.strategy, self.max_restarts, float(self.max_seconds), used, children)

    # -- dynamic children ---------------------------------------------------------------------

    def handle_call(self, request: Any, sender: Any) -> Any:
        match request:
            case ("$start_child", spec):
                if self.strategy == "simple_one_for_one":
                    spec = replace(spec, id=len(self._children))
                spec = _validate(spec, f"{type(self).__qualname__} start_child")
                if self.strategy != "simple_one_for_one" and any(
                        c.spec.id == spec.id for c in self._children):
                    raise ValueError(f"a child with id {spec.id!r} already exists")
                try:
                    pid = self._start(spec)
                except InitError as e:
                    return ("error", e.reason)
                self._children.append(_Child(spec, pid))
                return ("ok", pid)
            case ("$terminate_child", key):
                for entry in self._children:
                    if key in (entry.pid, entry.spec.id):
                        self._stop_child(entry)
                        self._children.remove(entry)
                        return True
                return False
            case ("$which_children",):
                return [(c.spec.id, c.pid, "supervisor" if c.spec.is_supervisor else "worker")
                        for c in self._children]
        return super().handle_call(request, sender)


class DynamicSupervisor(Supervisor):
    """A supervisor for children started at run time with :func:`start_child`."""

    strategy = "simple_one_for_one"


def start_child(supervisor: Any, spec: ChildSpec, timeout: float | None = None, *,
                node: str | None = None) -> Any:
    """Starts a child under a running supervisor; returns its pid or raises InitError.

    ``node`` places the child on that node of the cluster (as ``child(..., node=)``)."""
    outcome, value = call(supervisor, ("$start_child", _placed(spec, node)), timeout)
    if outcome == "error":
        raise InitError(None, value)
    return value


async def start_child_async(supervisor: Any, spec: ChildSpec, timeout: float | None = None, *,
                            node: str | None = None) -> Any:
    """``await``-able :func:`start_child` for async code (the supervisor starts the child
    while the caller awaits, holding no thread)."""
    from ._aio import call_async

    outcome, value = await call_async(supervisor, ("$start_child", _placed(spec, node)), timeout)
    if outcome == "error":
        raise InitError(None, value)
    return value


def _placed(spec: ChildSpec, node: str | None) -> ChildSpec:
    """``spec`` placed on ``node`` (None: as it is)."""
    if node is None:
        return spec
    _check_node(spec.name, node)
    return replace(spec, node=node)


def terminate_child(supervisor: Any, child_id_or_pid: Any, timeout: float | None = None) -> bool:
    """Stops a child (by id or pid) and forgets it; false if there was none."""
    return bool(call(supervisor, ("$terminate_child", child_id_or_pid), timeout))


def which_children(supervisor: Any) -> list[tuple[Any, Any, str]]:
    """``(id, pid or None, "worker" | "supervisor")`` for each child, in start order."""
    children: list[tuple[Any, Any, str]] = call(supervisor, ("$which_children",))
    return children
