"""Scheduling: a runaway handler does not stop the other actors of its node (docs/semantics.md, "The
model")."""

from __future__ import annotations

import time

import pytest

import rebeam
from _util import expect, wait_down


class Runaway(rebeam.GenServer):
    """``spin`` never returns (pure Python loop); ``sleep`` blocks in C for 10 s."""

    def init(self, owner):
        self.owner = owner

    def handle_cast(self, request):
        rebeam.send(self.owner, ("started", request))
        if request == "spin":
            while True:
                pass
        elif request == "sleep":
            time.sleep(10)

    def handle_call(self, request, sender):
        self.handle_cast(request)
        return "done"


class Counter(rebeam.GenServer):
    def init(self):
        self.n = 0

    def handle_call(self, request, sender):
        self.n += 1
        return self.n


def _answers_while(blocker_request):
    me = rebeam.self_pid()
    runaway = rebeam.spawn(Runaway, me)
    rebeam.cast(runaway, blocker_request)
    expect(("started", blocker_request))
    counters = [rebeam.spawn(Counter) for _ in range(20)]
    start = time.monotonic()
    for _ in range(5):
        for c in counters:
            rebeam.call(c, "inc", timeout=2)
    assert [rebeam.call(c, "get", timeout=2) for c in counters] == [6] * 20
    assert time.monotonic() - start < 3.0
    return runaway


def test_a_spinning_handler_does_not_stop_other_actors():
    runaway = _answers_while("spin")
    ref = rebeam.monitor(runaway)
    rebeam.exit(runaway, "kill")
    assert wait_down(ref, timeout=2).reason == "killed"
    assert not rebeam.is_alive(runaway)


def test_a_sleeping_handler_does_not_stop_other_actors():
    runaway = _answers_while("sleep")
    ref = rebeam.monitor(runaway)
    rebeam.exit(runaway, "kill")
    assert wait_down(ref, timeout=2).reason == "killed"


def test_several_spinners_at_once():
    me = rebeam.self_pid()
    spinners = [rebeam.spawn(Runaway, me) for _ in range(4)]
    for s in spinners:
        rebeam.cast(s, "spin")
    for _ in spinners:
        expect(("started", "spin"))
    c = rebeam.spawn(Counter)
    assert rebeam.call(c, "inc", timeout=2) == 1
    refs = [rebeam.monitor(s) for s in spinners]
    for s in spinners:
        rebeam.exit(s, "kill")
    assert [wait_down(r, timeout=2).reason for r in refs] == ["killed"] * 4


def test_a_function_process_spinning_does_not_stop_others():
    me = rebeam.self_pid()

    def spin():
        rebeam.send(me, "spinning")
        while True:
            pass

    pid, ref = rebeam.spawn_monitor(spin)
    expect("spinning")
    c = rebeam.spawn(Counter)
    assert rebeam.call(c, "inc", timeout=2) == 1
    rebeam.exit(pid, "kill")
    assert wait_down(ref, timeout=2).reason == "killed"


@pytest.mark.parametrize("request_kind", ["spin", "sleep"])
def test_call_to_a_runaway_handler_times_out_on_time(request_kind):
    me = rebeam.self_pid()
    runaway = rebeam.spawn(Runaway, me)
    start = time.monotonic()
    with pytest.raises(rebeam.Timeout):
        rebeam.call(runaway, request_kind, timeout=0.2)
    assert time.monotonic() - start < 1.0, "the caller's timeout is honoured"
    ref = rebeam.monitor(runaway)
    rebeam.exit(runaway, "kill")
    assert wait_down(ref, timeout=2).reason == "killed"


@pytest.mark.parametrize("warm", [False, True])
def test_killing_a_caller_does_not_abort_the_callee_handler(warm):
    # warm: the server answered fast calls before, so the node may run its handler on the
    # caller's thread; killing the caller must still leave the handler alone.
    class Slow(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner

        def handle_call(self, request, sender):
            if request == "ping":
                return "pong"
            rebeam.send(self.owner, "handling")
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                pass
            rebeam.send(self.owner, "handled")
            return "ok"

    me = rebeam.self_pid()
    server = rebeam.spawn(Slow, me)
    for _ in range(10 if warm else 0):
        assert rebeam.call(server, "ping") == "pong"

    def caller():
        rebeam.call(server, "work", timeout=5)

    pid, ref = rebeam.spawn_monitor(caller)
    expect("handling")
    rebeam.exit(pid, "kill")
    assert wait_down(ref, timeout=1).reason == "killed", "the caller dies at once"
    expect("handled")
    assert rebeam.is_alive(server)
    assert rebeam.call(server, "again", timeout=5) == "ok"


def test_many_handlers_blocked_in_receive_do_not_starve_the_node():
    class Waiter(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner

        def handle_cast(self, request):
            rebeam.send(self.owner, ("waiting", rebeam.self_pid()))
            rebeam.receive(match=lambda m: m == "go", timeout=10)
            rebeam.send(self.owner, ("went", rebeam.self_pid()))

    me = rebeam.self_pid()
    waiters = [rebeam.spawn(Waiter, me) for _ in range(40)]
    for w in waiters:
        rebeam.cast(w, "wait")
    assert {rebeam.receive(match=lambda m: m[0] == "waiting", timeout=5)[1]
            for _ in waiters} == set(waiters)
    c = rebeam.spawn(Counter)
    assert rebeam.call(c, "inc", timeout=2) == 1, "the node still runs other handlers"
    for w in waiters:
        rebeam.send(w, "go")
    assert {rebeam.receive(match=lambda m: m[0] == "went", timeout=5)[1]
            for _ in waiters} == set(waiters)


def test_many_function_processes_waiting_in_receive():
    me = rebeam.self_pid()

    def echo_once():
        rebeam.send(me, ("echo", rebeam.receive(timeout=10)))

    pids = [rebeam.spawn(echo_once) for _ in range(300)]
    for i, pid in enumerate(pids):
        rebeam.send(pid, i)
    got = sorted(rebeam.receive(timeout=5)[1] for _ in pids)
    assert got == list(range(300))
