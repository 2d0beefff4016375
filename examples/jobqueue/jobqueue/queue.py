"""The queue: keeps every job until it is done or out of attempts."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

import rebeam

QUEUE = rebeam.Global("jobqueue")
MAX_ATTEMPTS = 3


@dataclass
class Job:
    id: int
    task: str
    args: tuple[Any, ...]
    attempts: int = 0
    state: str = "pending"  # pending | running | done | failed
    result: Any = None
    waiters: list[rebeam.Sender] | None = None


class Queue(rebeam.GenServer):
    def init(self) -> None:
        self.ids = itertools.count(1)
        self.jobs: dict[int, Job] = {}
        self.pending: deque[int] = deque()
        self.idle: deque[rebeam.Pid] = deque()
        self.running: dict[rebeam.Pid, int] = {}  # worker -> job id
        self.watched: set[rebeam.Pid] = set()

    def handle_call(self, request: Any, sender: rebeam.Sender) -> Any:
        match request:
            case ("submit", task, args):
                job = Job(next(self.ids), task, tuple(args))
                self.jobs[job.id] = job
                self.pending.append(job.id)
                self._dispatch()
                return job.id
            case ("status", job_id):
                job = self.jobs[job_id]
                return job.state, job.attempts, job.result
            case ("result", job_id):
                job = self.jobs[job_id]
                if job.state in ("done", "failed"):
                    return job.state, job.result
                job.waiters = (job.waiters or []) + [sender]
                return rebeam.noreply()
            case "stats":
                counts: dict[str, int] = {}
                for job in self.jobs.values():
                    counts[job.state] = counts.get(job.state, 0) + 1
                return counts
        raise ValueError(f"unknown request {request!r}")

    def handle_cast(self, request: Any) -> None:
        match request:
            case ("ready", worker):
                if worker not in self.watched:
                    rebeam.monitor(worker)
                    self.watched.add(worker)
                self.idle.append(worker)
            case ("done", job_id, value, worker):
                self.running.pop(worker, None)
                self._finish(self.jobs[job_id], "done", value)
                self.idle.append(worker)
        self._dispatch()

    def handle_info(self, message: Any) -> None:
        if isinstance(message, rebeam.Down):
            worker = message.pid
            self.watched.discard(worker)
            if worker in self.idle:
                self.idle.remove(worker)
            job_id = self.running.pop(worker, None)
            if job_id is not None:
                job = self.jobs[job_id]
                if job.attempts >= MAX_ATTEMPTS:
                    self._finish(job, "failed", message.reason)
                else:
                    job.state = "pending"
                    self.pending.appendleft(job_id)
            self._dispatch()

    def _dispatch(self) -> None:
        while self.pending and self.idle:
            worker = self.idle.popleft()
            job = self.jobs[self.pending.popleft()]
            job.attempts += 1
            job.state = "running"
            self.running[worker] = job.id
            rebeam.cast(worker, ("run", job.id, job.task, job.args, job.attempts))

    def _finish(self, job: Job, state: str, value: Any) -> None:
        job.state, job.result = state, value
        for waiter in job.waiters or []:
            rebeam.reply(waiter, (state, value))
        job.waiters = None


def submit(task: str, *args: Any) -> int:
    """Queues a job; returns its id."""
    job_id: int = rebeam.call(QUEUE, ("submit", task, args))
    return job_id


def status(job_id: int) -> tuple[str, int, Any]:
    """``(state, attempts, result)`` of a job."""
    state: tuple[str, int, Any] = rebeam.call(QUEUE, ("status", job_id))
    return state


def result(job_id: int, timeout: float = 30.0) -> tuple[str, Any]:
    """Waits for a job to end: ``("done", value)`` or ``("failed", last_reason)``."""
    outcome: tuple[str, Any] = rebeam.call(QUEUE, ("result", job_id), timeout=timeout)
    return outcome
