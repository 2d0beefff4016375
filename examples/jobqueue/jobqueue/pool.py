"""Workers and their supervisor. A worker tells the queue it is ready, runs one job at a
time, and lets a crashing job take it down: its supervisor starts a fresh one."""

from __future__ import annotations

from typing import Any

import rebeam

from .tasks import TASKS


def _workers() -> rebeam.KeyRegistry:
    # A node keeps one registry per name; a new code version of this module reuses it.
    try:
        return rebeam.registry("jobqueue.workers")
    except LookupError:
        return rebeam.KeyRegistry("jobqueue.workers")


WORKERS = _workers()
"""Worker ``i`` is registered as ``Via(WORKERS, i)`` while it runs."""


class Worker(rebeam.GenServer):
    def init(self, index: int) -> None:
        self.index = index
        rebeam.cast("jobqueue", ("ready", rebeam.self_pid()))

    def handle_cast(self, request: Any) -> None:
        match request:
            case ("run", job_id, task, args, attempt):
                # An exception here crashes the worker; the queue sees it go down.
                value = TASKS[task](attempt, *args)
                rebeam.cast("jobqueue", ("done", job_id, value, rebeam.self_pid()))


class Pool(rebeam.Supervisor):
    strategy = "one_for_one"
    max_restarts = 100  # crashing jobs are expected; the queue bounds them by max_attempts
    max_seconds = 1

    def children(self, size: int) -> list[rebeam.ChildSpec]:
        return [rebeam.child(Worker, (i,), name=rebeam.Via(WORKERS, i)) for i in range(size)]
