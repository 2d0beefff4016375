"""``Pool``: a set of servers spread over the cluster's nodes, so that CPU-bound Python work
runs on every core (one interpreter per node, one node per core on ``--dev``)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from ._native import native
from ._pid import Pid
from ._remote import node as this_node
from ._remote import spawn_on

__all__ = ["Pool"]

# Requests ``map`` keeps in flight per server: the next one waits in the server's mailbox
# while it works, so a server on another node never idles for the round trip of a reply
# to the mapping process and its next request (which waits for the mapping node's
# interpreter, busy with that node's own servers). Two keep every server busy; more would
# only make the last requests queue behind slow servers instead of going to free ones.
IN_FLIGHT = 2


class Pool:
    """``size`` servers of ``server`` (a GenServer class) started with ``*args, **kwargs``
    and spread round-robin over ``nodes`` (default: every alive node, this one first), each
    linked to the process that made the pool. ``size`` defaults to one per node.

    ``pool.call(request)`` sends to the next server in turn; ``pool.map(requests)`` keeps
    every server busy, each with two requests in flight (one handled, one waiting), and
    returns the replies in order. Use it as
    a context manager (or call ``stop()``) to stop the servers::

        with rebeam.Pool(Hasher) as pool:
            digests = pool.map(blocks)

    Async code makes one with ``await Pool.start_async(...)`` and uses ``call_async`` and
    ``map_async``, which never block the event loop::

        with await rebeam.Pool.start_async(Hasher) as pool:
            digests = await pool.map_async(blocks)
    """

    def __init__(self, server: type, *args: Any, size: int | None = None,
                 nodes: list[str] | None = None, **kwargs: Any) -> None:
        self.pids: list[Pid] = []
        try:
            for node in _placement(nodes, size):
                self.pids.append(spawn_on(node, server, *args, link=True, **kwargs))
        except BaseException:
            self.stop()
            raise
        self._next = itertools.cycle(range(len(self.pids)))

    @classmethod
    async def start_async(cls, server: type, *args: Any, size: int | None = None,
                          nodes: list[str] | None = None, **kwargs: Any) -> Pool:
        """``await``-able construction for async code: the servers start on their nodes
        side by side, without blocking the event loop; the same arguments and errors."""
        from ._remote import spawn_on_async

        pool = cls.__new__(cls)
        started = await asyncio.gather(
            *(spawn_on_async(node, server, *args, link=True, **kwargs)
              for node in _placement(nodes, size)), return_exceptions=True)
        pool.pids = [p for p in started if isinstance(p, Pid)]
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            pool.stop()
            raise failed[0]
        pool._next = itertools.cycle(range(len(pool.pids)))
        return pool

    def __len__(self) -> int:
        return len(self.pids)

    def call(self, request: object, timeout: float | None = 5.0) -> Any:
        """Calls the next server in turn with ``request`` and returns its reply."""
        return native.call(self.pids[next(self._next)], request, timeout)

    async def call_async(self, request: object, timeout: float | None = 5.0) -> Any:
        """``await``-able :meth:`call` for async code."""
        from ._aio import call_async

        return await call_async(self.pids[next(self._next)], request, timeout)

    def map(self, requests: Iterable[object], timeout: float | None = None) -> list[Any]:
        """Calls the servers with every request, each server given the next request as soon
        as it answered one of its two in flight; returns the replies in the order of
        ``requests``. The
        first request that raises makes ``map`` raise it (after the ones in flight finish).
        ``timeout`` bounds each call."""
        items = list(requests)
        results: list[Any] = [None] * len(items)
        failures: list[BaseException] = []
        queue: Iterator[int] = iter(range(len(items)))
        lock = threading.Lock()
        me = native.self_pid()

        def take() -> int | None:
            with lock:
                if failures:
                    return None
                return next(queue, None)

        def drive(pid: Pid) -> None:
            # One driver per request in flight: a function process that calls in a loop.
            while (i := take()) is not None:
                try:
                    results[i] = native.call(pid, items[i], timeout)
                except Exception as e:  # noqa: BLE001 - handed to the caller
                    with lock:
                        failures.append(e)
            native.send(me, ("$pool_done", native.self_pid()))

        from ._process import _start

        drivers = {_start(drive, (pid,), {}, True, False)
                   for pid in _in_flight(self.pids, len(items))}
        while drivers:
            done = native.receive(lambda m: isinstance(m, tuple) and len(m) == 2
                                  and m[0] == "$pool_done" and m[1] in drivers, None)
            drivers.discard(done[1])
        if failures:
            raise failures[0]
        return results

    async def map_async(self, requests: Iterable[object],
                        timeout: float | None = None) -> list[Any]:
        """``await``-able :meth:`map` for async code: the same order, errors and pacing (two
        requests in flight per server)."""
        from ._aio import call_async

        items = list(requests)
        results: list[Any] = [None] * len(items)
        failures: list[BaseException] = []
        queue: Iterator[int] = iter(range(len(items)))

        async def drive(pid: Pid) -> None:
            while not failures and (i := next(queue, None)) is not None:
                try:
                    results[i] = await call_async(pid, items[i], timeout)
                except Exception as e:  # noqa: BLE001 - handed to the caller
                    failures.append(e)

        await asyncio.gather(*(drive(pid) for pid in _in_flight(self.pids, len(items))))
        if failures:
            raise failures[0]
        return results

    def stop(self, reason: object = "shutdown") -> None:
        """Stops every server (they are linked to the pool's owner: unlinked first)."""
        for pid in self.pids:
            native.unlink(pid)
            native.exit(pid, reason)
        self.pids = []

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _placement(nodes: list[str] | None, size: int | None) -> list[str]:
    """The node of each server of a pool: ``size`` (default one per node) round-robin over
    ``nodes`` (default every alive node, this one first)."""
    from ._globals import nodes as alive_nodes

    me = this_node()
    if nodes is None:
        nodes = [me] + [n for n in alive_nodes() if n != me]
    if not nodes:
        raise ValueError("Pool needs at least one node")
    count = len(nodes) if size is None else size
    if count < 1:
        raise ValueError(f"Pool size must be at least 1, got {count}")
    return [nodes[i % len(nodes)] for i in range(count)]


def _in_flight(pids: list[Pid], items: int) -> list[Pid]:
    """One driver per request that may be in flight: each server gets ``IN_FLIGHT``."""
    return (pids * IN_FLIGHT)[:max(1, items)]
