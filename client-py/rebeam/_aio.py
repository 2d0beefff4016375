"""asyncio actors: the node's event loop, and awaitable ``call`` and ``receive``.

A GenServer handler defined with ``async def`` runs as a task on one event loop of the node
(a thread started on first use). While it awaits, the server holds no thread and takes no
other message; the node hands the server its next message when the task ends. Inside async
code, ``await call_async(...)`` and ``await receive_async(...)`` wait without blocking the
loop; the blocking ``call``/``receive`` raise there instead of stalling every async process.
``await spawn_async(...)`` starts a server whose ``init`` is async without blocking the loop.
Tasks a process's code creates run as that process (the loop's task factory).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from ._errors import Error, Exit, Timeout
from ._names import Dest, Via
from ._native import native
from ._pid import Pid, Ref

__all__ = ["call_async", "event_loop", "receive_async", "spawn_async"]

log = logging.getLogger("rebeam")

_D = TypeVar("_D")
_MISSING: Any = object()

_START, _CANCEL, _WAKE = 0, 1, 2

_loop: asyncio.AbstractEventLoop | None = None
_tasks: dict[int, asyncio.Task[Any]] = {}
"""Tasks running processes' code, by key; a task leaves when it is done."""
_futures: dict[int, asyncio.Future[Any]] = {}
"""Futures of pending ``call_async`` / ``receive_async`` calls, by key."""


def _start(fd: int) -> None:
    """Starts the node's event loop on a thread of its own, watching ``fd`` (the node's
    wake-up socket). The node calls this once, when the first coroutine must run."""
    global _loop
    started = threading.Event()
    loop = asyncio.new_event_loop()

    def run() -> None:
        native._aio_loop_thread()
        asyncio.set_event_loop(loop)
        loop.set_task_factory(_task_factory)
        loop.add_reader(fd, _drain)
        started.set()
        while True:
            try:
                loop.run_forever()
            except BaseException:  # noqa: BLE001 - the loop serves every async process
                # Nothing may end this thread: an exception that escaped a callback (a
                # kill's interrupt that landed here) is logged and the loop goes on.
                log.exception("the node's event loop stopped on an exception; restarting it")

    _loop = loop
    threading.Thread(target=run, name="rebeam-asyncio", daemon=True).start()
    started.wait()


def _task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """Tasks a process's code creates (``asyncio.gather``, ``create_task``) run as that
    process: ``self_pid``, links and ``receive_async`` work in them, and a kill of the
    process cancels them at their next step."""
    return asyncio.Task(native._aio_step(coro), loop=loop, **kwargs)


def _drain() -> None:
    """Takes what the node queued for the loop: tasks to start or cancel, futures to resolve."""
    loop = _loop
    assert loop is not None
    for kind, key, value in native._aio_take():
        if kind == _START:
            task = loop.create_task(value)
            _tasks[key] = task
            task.add_done_callback(functools.partial(_finished, key, value))
        elif kind == _CANCEL:
            running = _tasks.get(key)
            if running is not None:
                running.cancel("the process was killed")
        else:
            future = _futures.pop(key, None)
            if future is not None and not future.done():
                future.set_result(value)


def _finished(key: int, step: Any, task: asyncio.Task[Any]) -> None:
    _tasks.pop(key, None)
    native._aio_done(step, task)


def event_loop() -> asyncio.AbstractEventLoop:
    """The node's event loop, where async handlers run (started on first use)."""
    if _loop is None:
        raise Error("the node's event loop has not started: no async handler ran yet")
    return _loop


def _check_loop(what: str) -> asyncio.AbstractEventLoop:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is None or running is not _loop:
        raise Error(
            f"{what} is awaited in async handlers (and async function processes), which run "
            "on the node's event loop; from plain code use the blocking form"
        )
    return running


async def call_async(dest: Dest, request: object, timeout: float | None = 5.0) -> Any:
    """``await``-able :func:`rebeam.call` for async handlers: sends ``request`` and waits up
    to ``timeout`` seconds for the reply without blocking the event loop.

    Raises :class:`rebeam.Timeout`, or :class:`rebeam.Exit` when the target is dead, dies
    before replying or no process holds the name (reason ``noproc``); a late reply is
    dropped."""
    loop = _check_loop("call_async")
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a non-negative number of seconds or None, not {timeout}")
    if dest.__class__ is Via:
        pid = dest.whereis()
        if pid is None:
            raise Exit(dest, "noproc")
        dest = pid
    key, callee = native._aio_call(dest, request)
    try:
        async with asyncio.timeout(timeout):
            ok, value = await _resolved(loop, key)
    except TimeoutError:
        raise Timeout(f"call to {callee} timed out after {timeout}s") from None
    if ok:
        return value
    raise value


async def _resolved(loop: asyncio.AbstractEventLoop, key: int) -> Any:
    """What the node resolves future ``key`` with (registered before this awaits, so an
    outcome queued meanwhile finds it)."""
    future = loop.create_future()
    _futures[key] = future
    try:
        return await future
    finally:
        _futures.pop(key, None)


@overload
async def spawn_async(target: Callable[..., object] | type, *args: Any, link: bool = False,
                      monitor: Literal[False] = False, **kwargs: Any) -> Pid: ...
@overload
async def spawn_async(target: Callable[..., object] | type, *args: Any, link: bool = False,
                      monitor: Literal[True], **kwargs: Any) -> tuple[Pid, Ref]: ...
async def spawn_async(target: Callable[..., object] | type, *args: Any,  # noqa: E302
                      link: bool = False, monitor: bool = False,
                      **kwargs: Any) -> Pid | tuple[Pid, Ref]:
    """``await``-able :func:`rebeam.spawn` (``link=True``: ``spawn_link``, ``monitor=True``:
    ``spawn_monitor``, returning ``(pid, ref)``) for async code: a server whose ``init`` is
    ``async def`` starts without blocking the event loop, and the spawner resumes once
    ``init`` returned. Raises :class:`rebeam.InitError` as ``spawn`` does. A plain ``init``
    runs at once, on the loop; a function process never waits for its spawner."""
    return await _spawn_async(target, args, kwargs, link, monitor)


async def _spawn_async(target: Callable[..., object] | type, args: tuple[Any, ...],
                       kwargs: dict[str, Any], link: bool, monitor: bool) -> Pid | tuple[Pid, Ref]:
    _check_loop("spawn_async")
    from ._process import _server_instance, _start

    server = _server_instance(target)
    if server is None:
        started: Pid | tuple[Pid, Ref] = _start(target, args, kwargs, link, monitor)
        return started
    done, value = native._aio_spawn_server(server, args, kwargs or None, link, monitor)
    if not done:
        ok, value = await _resolved(event_loop(), value)
        if not ok:
            raise value
    spawned: Pid | tuple[Pid, Ref] = value
    return spawned


@overload
async def receive_async(match: Callable[[Any], object] | None = None,
                        timeout: float | None = None) -> Any: ...
@overload
async def receive_async(match: Callable[[Any], object] | None = None,
                        timeout: float | None = None, *, default: _D) -> Any | _D: ...
async def receive_async(match: Callable[[Any], object] | None = None,
                        timeout: float | None = None, default: Any = _MISSING) -> Any:
    """``await``-able :func:`rebeam.receive` for async code: the first message for which
    ``match(message)`` is true, waiting up to ``timeout`` seconds (forever when None)
    without blocking the event loop. Other messages stay in the mailbox, in order. On
    timeout returns ``default``, or raises :class:`rebeam.Timeout`."""
    loop = _check_loop("receive_async")
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be a non-negative number of seconds or None, not {timeout}")
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        found, value, key = native._aio_receive(match)
        if found:
            return value
        future = loop.create_future()
        _futures[key] = future
        try:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            if remaining == 0.0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                await future
        except TimeoutError:
            # Mail may have come with the deadline: one last look, as `receive` takes it.
            found, value, key2 = native._aio_receive(match)
            native._aio_unwatch(key2)
            if found:
                return value
            if default is not _MISSING:
                return default
            raise Timeout(f"receive timed out after {timeout}s") from None
        finally:
            _futures.pop(key, None)
            native._aio_unwatch(key)
