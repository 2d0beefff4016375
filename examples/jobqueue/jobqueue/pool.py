"""Workers and their supervisor. A worker tells the queue it is ready, runs one job at a
time, and lets a crashing job take it down: its supervisor starts a fresh one."""

from __future__ import annotations

from typing import Any

import rebeam

from .tasks import TASKS

QUEUE = rebeam.Global("jobqueue")


def _workers() -> rebeam.KeyRegistry:
    # A node keeps one registry per name; a new code version of this module reuses it.
    try:
        return rebeam.registry("jobqueue.workers")
    except LookupError:
        return rebeam.KeyRegistry("jobqueue.workers")


WORKERS = _workers()
"""Worker ``i`` of pool ``p`` is registered as ``Via(WORKERS, (p, i))`` on its node."""


class Worker(rebeam.GenServer):
    def init(self, pool: str, index: int) -> None:
        self.pool, self.index = pool, index
        self.announce()

    def announce(self) -> None:
        """Tells the queue this worker is free. On another node the queue's global name may
        not be known yet, and a restarted queue forgets its workers: so find it, watch it,
        and announce again when it comes back."""
        queue = rebeam.whereis(QUEUE)
        if queue is None:
            rebeam.send_after(0.05, rebeam.self_pid(), "announce")
            return
        rebeam.monitor(queue)
        rebeam.cast(queue, ("ready", rebeam.self_pid()))

    def handle_info(self, message: Any) -> None:
        if message == "announce":
            self.announce()
        elif isinstance(message, rebeam.Down):  # the queue went; its name lags a moment
            rebeam.send_after(0.05, rebeam.self_pid(), "announce")

    def handle_cast(self, request: Any) -> None:
        match request:
            case ("run", job_id, task, args, attempt):
                # An exception here crashes the worker; the queue sees it go down.
                value = TASKS[task](attempt, *args)
                rebeam.cast(QUEUE, ("done", job_id, value, rebeam.self_pid()))


class Pool(rebeam.Supervisor):
    strategy = "one_for_one"
    max_restarts = 100  # crashing jobs are expected; the queue bounds them by max_attempts
    max_seconds = 1

    def children(self, pool: str, size: int) -> list[rebeam.ChildSpec]:
        return [rebeam.child(Worker, (pool, i), name=rebeam.Via(WORKERS, (pool, i)))
                for i in range(size)]
