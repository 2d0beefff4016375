"""Supervisors: strategies, intensity, restart types, shutdown order and policies, nesting,
dynamic children and spec validation (docs/semantics.md, "GenServer and Supervisor")."""

from __future__ import annotations

import time
from typing import Any

import pytest

import rebeam
from _util import forever, nothing, wait_down, wait_exit
from rebeam import child


class Worker(rebeam.GenServer):
    """Reports ("start", id, pid) and ("stop", id, reason) to ``log``; traps exits so that
    a supervisor's shutdown runs ``terminate``."""

    def init(self, log, wid, trap=True):
        self.log, self.wid = log, wid
        if trap:
            rebeam.trap_exits(True)
        rebeam.send(log, ("start", wid, rebeam.self_pid()))

    def handle_call(self, request, sender):
        if request == "ping":
            return ("pong", self.wid)
        return None

    def handle_cast(self, request):
        match request:
            case "crash":
                raise RuntimeError(f"{self.wid} crashed")
            case ("stop", reason):
                rebeam.stop(reason)

    def terminate(self, reason):
        rebeam.send(self.log, ("stop", self.wid, reason))


def worker(log, wid, trap=True, **options):
    return child(Worker, (log, wid, trap), id=wid, **options)


def make_sup(specs, strategy="one_for_one", max_restarts=3, max_seconds=5.0):
    class Sup(rebeam.Supervisor):
        def children(self):
            return specs

    Sup.strategy = strategy
    Sup.max_restarts = max_restarts
    Sup.max_seconds = max_seconds
    return Sup


def starts(n):
    """The next ``n`` start reports, as (id, pid) in arrival order."""
    out = []
    for _ in range(n):
        _, wid, pid = rebeam.receive(match=lambda m: m[0] == "start", timeout=5)
        out.append((wid, pid))
    return out


def stops(n):
    """The next ``n`` stop reports, as (id, reason) in arrival order."""
    out = []
    for _ in range(n):
        _, wid, reason = rebeam.receive(match=lambda m: m[0] == "stop", timeout=5)
        out.append((wid, reason))
    return out


def pids_of(sup):
    return {cid: pid for cid, pid, _ in rebeam.which_children(sup)}


def crash(pid):
    """Makes a Worker crash; returns its exit reason and drops its own stop report."""
    ref = rebeam.monitor(pid)
    rebeam.cast(pid, "crash")
    reason = wait_down(ref).reason
    rebeam.receive(match=lambda m: m[0] == "stop" and m[2] == reason, timeout=5)
    return reason


def test_defaults_match_elixir():
    assert rebeam.Supervisor.strategy == "one_for_one"
    assert (rebeam.Supervisor.max_restarts, rebeam.Supervisor.max_seconds) == (3, 5)
    assert child(Worker).restart == "permanent"
    assert child(Worker).shutdown_policy == 5
    assert child(make_sup([])).shutdown_policy == "infinity"


def test_children_start_in_order_and_stop_in_reverse():
    me = rebeam.self_pid()
    rebeam.trap_exits(True)
    sup = rebeam.spawn_link(make_sup([worker(me, w) for w in "abcd"]))
    assert [w for w, _ in starts(4)] == list("abcd")
    assert list(pids_of(sup)) == list("abcd")
    rebeam.exit(sup, "shutdown")
    assert stops(4) == [(w, "shutdown") for w in "dcba"]
    assert wait_exit(sup).reason == "shutdown"


def test_one_for_one_restarts_only_the_failed_child():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, w) for w in "abc"]))
    before = dict(starts(3))
    reason = crash(before["b"])
    assert isinstance(reason, rebeam.Crash)
    (wid, new_b), = starts(1)
    assert wid == "b" and new_b != before["b"]
    after = pids_of(sup)
    assert after == {"a": before["a"], "b": new_b, "c": before["c"]}
    assert nothing(0.05, match=lambda m: m[0] == "stop")
    assert rebeam.call(new_b, "ping") == ("pong", "b")


def test_one_for_all_restarts_every_child():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, w) for w in "abc"], "one_for_all"))
    before = dict(starts(3))
    crash(before["b"])
    assert stops(2) == [("c", "shutdown"), ("a", "shutdown")], "others stop in reverse order"
    restarted = starts(3)
    assert [w for w, _ in restarted] == list("abc"), "and restart in start order"
    assert all(pid != before[w] for w, pid in restarted)
    assert pids_of(sup) == dict(restarted)


def test_rest_for_one_restarts_the_failed_child_and_those_after_it():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, w) for w in "abcd"], "rest_for_one"))
    before = dict(starts(4))
    crash(before["b"])
    assert stops(2) == [("d", "shutdown"), ("c", "shutdown")]
    restarted = starts(3)
    assert [w for w, _ in restarted] == list("bcd")
    after = pids_of(sup)
    assert after["a"] == before["a"]
    assert nothing(0.05, match=lambda m: m[0] == "stop" and m[1] == "a")


def test_exceeding_max_restarts_shuts_the_supervisor_down():
    me = rebeam.self_pid()
    rebeam.trap_exits(True)
    sup = rebeam.spawn_link(make_sup([worker(me, "a"), worker(me, "b")], max_restarts=2))
    current = dict(starts(2))
    for _ in range(2):
        crash(current["a"])
        current.update(starts(1))
    crash(current["a"])  # third crash within max_seconds: too many
    assert wait_exit(sup).reason == "shutdown"
    assert ("b", "shutdown") in stops(1), "it stopped its other children first"
    assert not rebeam.is_alive(current["b"])


def test_default_intensity_allows_three_restarts_in_five_seconds():
    me = rebeam.self_pid()
    sup, ref = rebeam.spawn_monitor(make_sup([worker(me, "a")]).__mro__[0])
    current = dict(starts(1))
    for _ in range(3):
        crash(current["a"])
        current.update(starts(1))
    assert rebeam.is_alive(sup)
    crash(current["a"])
    assert wait_down(ref).reason == "shutdown"


def test_restarts_older_than_max_seconds_do_not_count():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, "a")], max_restarts=1, max_seconds=0.2))
    current = dict(starts(1))
    crash(current["a"])
    current.update(starts(1))
    time.sleep(0.25)  # let the window pass (time itself is what is tested)
    crash(current["a"])
    current.update(starts(1))
    assert rebeam.is_alive(sup)


def test_permanent_transient_temporary_on_normal_exit():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([
        worker(me, "perm", restart="permanent"),
        worker(me, "trans", restart="transient"),
        worker(me, "temp", restart="temporary"),
    ]))
    pids = dict(starts(3))
    for wid in ("perm", "trans", "temp"):
        ref = rebeam.monitor(pids[wid])
        rebeam.cast(pids[wid], ("stop", "normal"))
        assert wait_down(ref).reason == "normal"
    assert [w for w, _ in starts(1)] == ["perm"]
    assert nothing(0.1, match=lambda m: m[0] == "start")
    children = {cid: pid for cid, pid, _ in rebeam.which_children(sup)}
    assert set(children) == {"perm", "trans"}, "a temporary child is forgotten"
    assert children["trans"] is None, "a transient child that ended normally stays down"


def test_transient_restarts_on_crash_but_not_on_shutdown():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, "t", restart="transient")]))
    pid = dict(starts(1))["t"]
    crash(pid)
    pid = dict(starts(1))["t"]
    ref = rebeam.monitor(pid)
    rebeam.cast(pid, ("stop", ("shutdown", "done")))
    wait_down(ref)
    assert nothing(0.1, match=lambda m: m[0] == "start")
    assert rebeam.which_children(sup) == [("t", None, "worker")]


def test_transient_restarts_on_custom_reason():
    me = rebeam.self_pid()
    rebeam.spawn(make_sup([worker(me, "t", restart="transient")]))
    pid = dict(starts(1))["t"]
    rebeam.cast(pid, ("stop", "weird"))
    assert [w for w, _ in starts(1)] == ["t"]


def test_temporary_never_restarted_even_by_sibling_under_one_for_all():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, "a"), worker(me, "tmp", restart="temporary"),
                                 worker(me, "c")], "one_for_all"))
    pids = dict(starts(3))
    crash(pids["a"])
    assert sorted(stops(2)) == [("c", "shutdown"), ("tmp", "shutdown")]
    assert [w for w, _ in starts(2)] == ["a", "c"]
    assert nothing(0.1, match=lambda m: m[0] == "start")
    assert [cid for cid, _, _ in rebeam.which_children(sup)] == ["a", "c"]


def test_temporary_crash_is_not_restarted_and_does_not_count():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, "tmp", restart="temporary")], max_restarts=0))
    pid = dict(starts(1))["tmp"]
    crash(pid)
    assert nothing(0.1, match=lambda m: m[0] == "start")
    assert rebeam.is_alive(sup)
    assert rebeam.which_children(sup) == []


def _stubborn(log):
    """Traps exits and ignores them: only a kill ends it."""
    rebeam.trap_exits(True)
    rebeam.send(log, ("start", "stubborn", rebeam.self_pid()))
    forever()


def test_shutdown_timeout_then_kill():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([child(_stubborn, (me,), id="stubborn", shutdown=0.2)]))
    pid = dict(starts(1))["stubborn"]
    ref = rebeam.monitor(pid)
    start = time.monotonic()
    assert rebeam.terminate_child(sup, "stubborn") is True
    elapsed = time.monotonic() - start
    assert wait_down(ref).reason == "killed"
    assert 0.19 <= elapsed < 3.0, elapsed


def test_shutdown_waits_for_a_child_that_exits_in_time():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, "w", shutdown=5)]))
    pid = dict(starts(1))["w"]
    ref = rebeam.monitor(pid)
    start = time.monotonic()
    rebeam.terminate_child(sup, "w")
    assert time.monotonic() - start < 1.0
    assert stops(1) == [("w", "shutdown")], "terminate ran: it was asked, not killed"
    assert wait_down(ref).reason == "shutdown"


def test_brutal_kill_does_not_run_terminate():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, "w", shutdown="brutal_kill")]))
    pid = dict(starts(1))["w"]
    ref = rebeam.monitor(pid)
    rebeam.terminate_child(sup, "w")
    assert wait_down(ref).reason == "killed"
    assert nothing(0.1, match=lambda m: m[0] == "stop")
    assert rebeam.which_children(sup) == []


def test_nested_supervisors():
    me = rebeam.self_pid()
    Inner = make_sup([worker(me, "i1"), worker(me, "i2")], max_restarts=1)
    Outer = make_sup([child(Inner, id="inner"), worker(me, "o1")])
    rebeam.trap_exits(True)
    outer = rebeam.spawn_link(Outer)
    pids = dict(starts(3))
    assert list(pids) == ["i1", "i2", "o1"]
    kids = rebeam.which_children(outer)
    assert [(cid, kind) for cid, _, kind in kids] == [("inner", "supervisor"), ("o1", "worker")]
    inner = kids[0][1]

    # a crash below is handled by the inner supervisor alone
    crash(pids["i1"])
    pids.update(starts(1))
    assert rebeam.which_children(outer)[0][1] == inner

    # the inner supervisor gives up: the outer one restarts it with fresh children
    crash(pids["i1"])
    assert stops(1) == [("i2", "shutdown")]
    restarted = starts(2)
    assert [w for w, _ in restarted] == ["i1", "i2"]
    new_inner = rebeam.which_children(outer)[0][1]
    assert new_inner != inner and rebeam.is_alive(new_inner)
    assert rebeam.which_children(outer)[1][1] == pids["o1"]

    # stopping the tree stops everything in reverse start order, depth first
    rebeam.exit(outer, "shutdown")
    assert stops(3) == [("o1", "shutdown"), ("i2", "shutdown"), ("i1", "shutdown")]
    assert wait_exit(outer).reason == "shutdown"


class Fails(rebeam.GenServer):
    def init(self, log):
        rebeam.send(log, ("start", "fails", rebeam.self_pid()))
        raise ValueError("cannot start")


def test_child_init_raising_makes_supervisor_start_fail():
    me = rebeam.self_pid()
    Sup = make_sup([worker(me, "a"), child(Fails, (me,), id="fails"), worker(me, "c")])
    with pytest.raises(rebeam.InitError) as info:
        rebeam.spawn(Sup)
    started = starts(2)
    assert [w for w, _ in started] == ["a", "fails"], "c was never started"
    assert stops(1) == [("a", "shutdown")], "a was stopped again"
    reason = info.value.reason
    assert reason[0] == "shutdown" and reason[1][:2] == ("failed_to_start_child", "fails")
    child_reason = reason[1][2]
    assert isinstance(child_reason, rebeam.Crash) and child_reason.type == "ValueError"
    assert "cannot start" in child_reason.traceback
    cause = info.value.__cause__
    assert isinstance(cause, rebeam.InitError) and isinstance(cause.__cause__, ValueError)
    assert not rebeam.is_alive(info.value.pid)


@pytest.mark.parametrize(("field", "spec_or_attrs"), [
    ("strategy", {"strategy": "one_for_some"}),
    ("max_restarts", {"max_restarts": -1}),
    ("max_seconds", {"max_seconds": 0}),
    ("restart", child(Worker, restart="sometimes")),  # type: ignore[arg-type]
    ("shutdown", child(Worker, shutdown=-1)),
    ("shutdown", child(Worker, shutdown="later")),  # type: ignore[arg-type]
    ("name", child(Worker, name=42)),  # type: ignore[arg-type]
    ("start", child(42)),  # type: ignore[arg-type]
])
def test_invalid_specs_are_rejected_naming_the_field(field, spec_or_attrs):
    if isinstance(spec_or_attrs, dict):
        Sup = make_sup([])
        for key, value in spec_or_attrs.items():
            setattr(Sup, key, value)
    else:
        Sup = make_sup([spec_or_attrs])
    with pytest.raises(rebeam.InitError) as info:
        rebeam.spawn(Sup)
    assert f"'{field}'" in str(info.value.__cause__)
    assert isinstance(info.value.__cause__, ValueError | TypeError)


def test_invalid_child_entry_and_duplicate_ids_are_rejected():
    with pytest.raises(rebeam.InitError) as info:
        rebeam.spawn(make_sup(["not a spec"]))
    assert "child 0" in str(info.value.__cause__)
    with pytest.raises(rebeam.InitError) as info:
        rebeam.spawn(make_sup([child(Worker, id="x"), child(Worker, id="x")]))
    assert "'x'" in str(info.value.__cause__)


def test_named_children_are_registered_and_follow_restarts():
    me = rebeam.self_pid()
    name = f"named-worker-{me.serial}"
    rebeam.spawn(make_sup([worker(me, "w", name=name)]))
    pid = dict(starts(1))["w"]
    assert rebeam.whereis(name) == pid
    assert rebeam.call(name, "ping") == ("pong", "w")
    crash(pid)
    new = dict(starts(1))["w"]
    assert rebeam.whereis(name) == new


def test_dynamic_supervisor():
    me = rebeam.self_pid()
    sup = rebeam.spawn(rebeam.DynamicSupervisor)
    assert rebeam.which_children(sup) == []
    a = rebeam.start_child(sup, child(Worker, (me, "a")))
    b = rebeam.start_child(sup, child(Worker, (me, "b"), restart="temporary"))
    assert [w for w, _ in starts(2)] == ["a", "b"]
    assert [pid for _, pid, _ in rebeam.which_children(sup)] == [a, b]

    crash(a)  # permanent: restarted
    (wid, a2), = starts(1)
    assert wid == "a" and a2 != a
    crash(b)  # temporary: forgotten
    assert nothing(0.05, match=lambda m: m[0] == "start")
    assert [pid for _, pid, _ in rebeam.which_children(sup)] == [a2]

    assert rebeam.terminate_child(sup, a2) is True
    assert stops(1) == [("a", "shutdown")]
    assert rebeam.which_children(sup) == []
    assert rebeam.terminate_child(sup, a2) is False


def test_dynamic_start_child_failure_raises_init_error_and_supervisor_lives():
    me = rebeam.self_pid()
    sup = rebeam.spawn(rebeam.DynamicSupervisor)
    with pytest.raises(rebeam.InitError) as info:
        rebeam.start_child(sup, child(Fails, (me,)))
    assert isinstance(info.value.reason, rebeam.Crash)
    assert rebeam.is_alive(sup)
    assert rebeam.which_children(sup) == []


def test_start_child_on_a_static_supervisor():
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([worker(me, "a")]))
    starts(1)
    b = rebeam.start_child(sup, worker(me, "b"))
    assert [w for w, _ in starts(1)] == ["b"]
    assert pids_of(sup)["b"] == b
    with pytest.raises(rebeam.Exit):  # a duplicate id is an error in the call
        rebeam.start_child(sup, worker(me, "b"))


def test_supervisor_stops_children_when_its_parent_exits():
    me = rebeam.self_pid()

    def parent():
        rebeam.spawn_link(make_sup([worker(me, "a", trap=False), worker(me, "b", trap=False)]))
        forever()

    p = rebeam.spawn(parent)
    pids = dict(starts(2))
    refs = {w: rebeam.monitor(pid) for w, pid in pids.items()}
    rebeam.exit(p, "shutdown")
    assert wait_down(refs["a"]).reason == "shutdown"
    assert wait_down(refs["b"]).reason == "shutdown"


_attempts: dict[Any, int] = {}


class FailsAfterFirst(rebeam.GenServer):
    """Starts once; every restart fails in init."""

    def init(self, log, key):
        _attempts[key] = _attempts.get(key, 0) + 1
        rebeam.send(log, ("attempt", _attempts[key]))
        if _attempts[key] > 1:
            raise OSError("cannot come back")

    def handle_cast(self, request):
        raise RuntimeError("crash")


def test_failed_restarts_count_towards_intensity():
    me = rebeam.self_pid()
    key = object()
    sup, ref = rebeam.spawn_monitor(make_sup([child(FailsAfterFirst, (me, key), id="f")],
                                             max_restarts=2))
    assert rebeam.receive(timeout=5) == ("attempt", 1)
    pid = rebeam.which_children(sup)[0][1]
    rebeam.cast(pid, "crash")
    assert [rebeam.receive(timeout=5) for _ in range(2)] == [("attempt", 2), ("attempt", 3)]
    assert wait_down(ref).reason == "shutdown"


@pytest.mark.parametrize("warmed", [False, True])
def test_terminate_child_with_timeout_on_either_call_path(warmed):
    me = rebeam.self_pid()
    sup = rebeam.spawn(make_sup([child(_stubborn, (me,), id="stubborn", shutdown=0.1),
                                 worker(me, "w")]))
    pids = dict(starts(2))
    if warmed:
        for _ in range(5):
            rebeam.which_children(sup)
    ref = rebeam.monitor(pids["stubborn"])
    assert rebeam.terminate_child(sup, "stubborn") is True
    assert wait_down(ref).reason == "killed"
    b = rebeam.start_child(sup, worker(me, "b"))
    assert dict(starts(1))["b"] == b
    assert [cid for cid, _, _ in rebeam.which_children(sup)] == ["w", "b"]
