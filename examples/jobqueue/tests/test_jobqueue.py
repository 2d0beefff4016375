"""The job queue keeps every job through worker crashes (run with rebeam.testing)."""

from __future__ import annotations

import time

import rebeam
from jobqueue import WORKERS, result, status, submit
from rebeam.testing import assert_down


def test_jobs_run_on_the_pool(app: rebeam.Pid) -> None:
    ids = [submit("square", x) for x in range(20)]
    assert [result(i) for i in ids] == [("done", x * x) for x in range(20)]


def test_a_crashing_job_is_retried_on_a_fresh_worker_and_nothing_is_lost(app: rebeam.Pid) -> None:
    keys = [(p, i) for p in "ab" for i in range(4)]
    before = {k: WORKERS.whereis_name(k) for k in keys}
    ids = {x: submit("crash_once" if x % 5 == 0 else "square", x) for x in range(40)}
    outcomes = {x: result(job_id) for x, job_id in ids.items()}
    assert outcomes == {x: ("done", x * x) for x in range(40)}
    assert all(status(ids[x])[1] == 2 for x in range(0, 40, 5))  # crashed once, then ran
    assert all(status(ids[x])[1] == 1 for x in range(40) if x % 5)
    deadline = time.monotonic() + 5
    while None in (after := {k: WORKERS.whereis_name(k) for k in keys}).values():
        assert time.monotonic() < deadline, f"the pools are not whole again: {after}"
        rebeam.receive(timeout=0.005, default=None)  # a supervisor is restarting one
    assert before != after  # crashed workers were replaced under the same names


def test_a_job_that_always_crashes_fails_after_max_attempts(app: rebeam.Pid) -> None:
    state, reason = result(submit("always_crash", 7))
    assert state == "failed"
    assert isinstance(reason, rebeam.Crash) and reason.type == "Crash"
    assert status(submit("square", 3)) is not None
    assert rebeam.call(rebeam.Global("jobqueue"), "stats").get("failed") == 1


def test_workers_are_reachable_by_their_via_names(app: rebeam.Pid) -> None:
    worker = rebeam.Via(WORKERS, ("a", 0))
    pid = rebeam.whereis(worker)
    assert pid is not None
    rebeam.exit(worker, "kill")
    assert_down(pid)  # the pid is gone (noproc or killed), and a new worker takes the name
    for _ in range(1000):
        new = rebeam.whereis(worker)
        if new is not None and new != pid:
            break
        rebeam.receive(timeout=0.005, default=None)
    assert new is not None and new != pid
    assert result(submit("square", 9)) == ("done", 81)
