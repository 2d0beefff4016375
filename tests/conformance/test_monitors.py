"""Monitors: one-way, Down exactly once, noproc for the dead, demonitor (docs/semantics.md, "The model")."""

from __future__ import annotations

import pytest

import rebeam
from _util import expect, forever, nothing, wait_down


def test_down_arrives_once_with_ref_pid_and_reason():
    pid = rebeam.spawn(forever)
    ref = rebeam.monitor(pid)
    rebeam.exit(pid, "gone")
    down = wait_down(ref)
    assert isinstance(down, rebeam.Down)
    assert (down.ref, down.pid, down.reason) == (ref, pid, "gone")
    assert nothing(0.1, match=lambda m: isinstance(m, rebeam.Down))


def test_each_monitor_fires_once():
    pid = rebeam.spawn(forever)
    refs = [rebeam.monitor(pid) for _ in range(3)]
    assert len(set(refs)) == 3
    rebeam.exit(pid, "kill")
    downs = [wait_down(r) for r in refs]
    assert {d.reason for d in downs} == {"killed"}
    assert nothing(0.1, match=lambda m: isinstance(m, rebeam.Down))


def test_monitor_of_a_dead_process_gives_noproc():
    pid, ref = rebeam.spawn_monitor(lambda: None)
    wait_down(ref)
    ref2 = rebeam.monitor(pid)
    down = wait_down(ref2, timeout=1)
    assert (down.pid, down.reason) == (pid, "noproc")


def test_monitors_are_one_way():
    target = rebeam.spawn(forever)

    def watcher(owner):
        rebeam.monitor(target)
        rebeam.send(owner, "watching")
        forever()

    w, wref = rebeam.spawn_monitor(watcher, rebeam.self_pid())
    expect("watching")
    rebeam.exit(w, "watcher dies")
    wait_down(wref)
    assert rebeam.is_alive(target), "a watcher's death does not affect the target"
    assert rebeam.process_info(target)["monitored_by"] == 0, "its monitor was removed"


def test_monitor_does_not_kill_the_watcher():
    pid = rebeam.spawn(forever)
    ref = rebeam.monitor(pid)
    rebeam.exit(pid, "crash")
    assert wait_down(ref).reason == "crash"  # we got a message, not an exit signal


def test_demonitor_stops_the_down():
    pid = rebeam.spawn(forever)
    ref = rebeam.monitor(pid)
    assert rebeam.demonitor(ref) is True
    assert rebeam.demonitor(ref) is False
    other = rebeam.monitor(pid)
    rebeam.exit(pid, "bye")
    wait_down(other)
    assert nothing(0.1, match=lambda m: isinstance(m, rebeam.Down) and m.ref == ref)


def test_demonitor_flush_removes_a_delivered_down():
    pid = rebeam.spawn(forever)
    ref = rebeam.monitor(pid)
    sentinel = rebeam.monitor(pid)
    rebeam.exit(pid, "bye")
    wait_down(sentinel)  # Down of `ref` was delivered before this one
    rebeam.send(rebeam.self_pid(), "other mail")
    rebeam.demonitor(ref, flush=True)
    assert nothing(0.05, match=lambda m: isinstance(m, rebeam.Down))
    assert rebeam.receive(timeout=1) == "other mail", "flush leaves other messages"


def test_demonitor_without_flush_keeps_a_delivered_down():
    pid = rebeam.spawn(forever)
    ref = rebeam.monitor(pid)
    sentinel = rebeam.monitor(pid)
    rebeam.exit(pid, "bye")
    wait_down(sentinel)
    rebeam.demonitor(ref)
    assert wait_down(ref, timeout=0.5).reason == "bye"


def test_down_for_a_genserver_crash_carries_the_crash():
    class Fragile(rebeam.GenServer):
        def handle_cast(self, request):
            raise LookupError("nothing here")

    pid, ref = rebeam.spawn_monitor(Fragile)
    rebeam.cast(pid, "poke")
    reason = wait_down(ref).reason
    assert isinstance(reason, rebeam.Crash)
    assert reason.type == "LookupError" and "nothing here" in reason.message
    assert "handle_cast" in reason.traceback


def test_genserver_gets_down_in_handle_info():
    class Watcher(rebeam.GenServer):
        def init(self, owner, target):
            self.owner = owner
            self.ref = rebeam.monitor(target)

        def handle_info(self, message):
            if isinstance(message, rebeam.Down) and message.ref == self.ref:
                rebeam.send(self.owner, ("down", message.reason))

    target = rebeam.spawn(forever)
    rebeam.spawn(Watcher, rebeam.self_pid(), target)
    rebeam.exit(target, "shutdown")
    assert expect(("down", "shutdown"))


def test_down_comes_after_every_message_the_process_sent():
    me = rebeam.self_pid()

    def chatty():
        for i in range(200):
            rebeam.send(me, ("msg", i))

    for _ in range(5):
        _, ref = rebeam.spawn_monitor(chatty)
        wait_down(ref)  # skips ahead to the Down: every message must already be here
        got = []
        while (m := rebeam.receive(timeout=0, default=None)) is not None:
            got.append(m[1])
        assert got == list(range(200))


def test_monitor_of_an_unknown_name_raises_unknown_name():
    # OTP would deliver Down(noproc) for an unregistered name; see docs/semantics.md
    with pytest.raises(rebeam.UnknownName):
        rebeam.monitor(f"nobody-{rebeam.self_pid().serial}")


def test_monitoring_is_a_context_manager_that_demonitors_and_flushes():
    pid = rebeam.spawn(forever)
    with rebeam.monitoring(pid) as ref:
        rebeam.exit(pid, "bye")
        assert wait_down(ref).reason == "bye"
    other = rebeam.spawn(forever)
    with rebeam.monitoring(other) as ref:
        rebeam.exit(other, "kill")
        # leave the block without receiving: the Down is flushed with the monitor
        while rebeam.is_alive(other):
            nothing(0.005)
    assert nothing(0.05, match=lambda m: isinstance(m, rebeam.Down) and m.ref == ref)
