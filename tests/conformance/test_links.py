"""Links: bidirectional, abnormal exits propagate, normal does not (docs/semantics.md, "The model")."""

from __future__ import annotations

import pytest

import rebeam
from _util import expect, forever, nothing, wait_down, wait_exit


def _linked_pair(owner):
    """A process that links to a fresh ``forever`` process and reports both pids."""
    child = rebeam.spawn_link(forever)
    rebeam.send(owner, ("pair", rebeam.self_pid(), child))
    forever()


def test_crash_propagates_along_a_link():
    me = rebeam.self_pid()
    rebeam.spawn(_linked_pair, me)
    _, parent, child = rebeam.receive(timeout=5)
    parent_ref = rebeam.monitor(parent)
    child_ref = rebeam.monitor(child)
    rebeam.exit(child, "boom")
    assert wait_down(child_ref).reason == "boom"
    assert wait_down(parent_ref).reason == "boom"


def test_links_are_bidirectional():
    me = rebeam.self_pid()
    rebeam.spawn(_linked_pair, me)
    _, parent, child = rebeam.receive(timeout=5)
    child_ref = rebeam.monitor(child)
    rebeam.exit(parent, ("shutdown", "parent went"))
    assert wait_down(child_ref).reason == ("shutdown", "parent went")


def test_uncaught_exception_propagates_as_crash():
    def crasher():
        rebeam.receive(timeout=5)
        raise ZeroDivisionError("divided")

    def middle(owner):
        c = rebeam.spawn_link(crasher)
        rebeam.send(owner, c)
        forever()

    pid, ref = rebeam.spawn_monitor(middle, rebeam.self_pid())
    c = rebeam.receive(timeout=5)
    rebeam.send(c, "go")
    reason = wait_down(ref).reason
    assert isinstance(reason, rebeam.Crash) and reason.type == "ZeroDivisionError"


def test_normal_exit_does_not_propagate():
    def middle(owner):
        c = rebeam.spawn_link(lambda: None)
        ref = rebeam.monitor(c)
        wait_down(ref)
        rebeam.send(owner, "child gone, still here")
        forever()

    pid = rebeam.spawn(middle, rebeam.self_pid())
    expect("child gone, still here")
    assert rebeam.is_alive(pid)


def test_exit_signal_normal_to_another_process_is_ignored():
    pid = rebeam.spawn(forever)
    rebeam.exit(pid, "normal")
    ref = rebeam.monitor(pid)
    assert nothing(0.1, match=lambda m: isinstance(m, rebeam.Down))
    assert rebeam.is_alive(pid)
    rebeam.demonitor(ref)


def test_exit_self_normal_ends_the_process():
    def quits():
        rebeam.exit(rebeam.self_pid(), "normal")
        forever()

    _, ref = rebeam.spawn_monitor(quits)
    assert wait_down(ref).reason == "normal"


def test_link_to_a_dead_process_gives_noproc():
    dead, ref = rebeam.spawn_monitor(lambda: None)
    wait_down(ref)

    def links_to_dead():
        rebeam.link(dead)
        forever()

    _, ref2 = rebeam.spawn_monitor(links_to_dead)
    assert wait_down(ref2).reason == "noproc"


def test_link_to_a_dead_process_while_trapping_delivers_exit_noproc_at_once():
    dead, ref = rebeam.spawn_monitor(lambda: None)
    wait_down(ref)
    rebeam.trap_exits(True)
    rebeam.link(dead)
    exit_message = wait_exit(dead, timeout=1)
    assert exit_message.reason == "noproc"
    rebeam.trap_exits(False)


def test_link_then_target_crash_kills_linker():
    target = rebeam.spawn(forever)

    def linker(owner):
        rebeam.link(target)
        rebeam.send(owner, "linked")
        forever()

    linker_pid, ref = rebeam.spawn_monitor(linker, rebeam.self_pid())
    expect("linked")
    assert target in rebeam.process_info(linker_pid)["links"]
    assert linker_pid in rebeam.process_info(target)["links"]
    rebeam.exit(target, "bad")
    assert wait_down(ref).reason == "bad"


def test_unlink_stops_propagation_both_ways():
    target = rebeam.spawn(forever)

    def linker(owner):
        rebeam.link(target)
        rebeam.unlink(target)
        rebeam.send(owner, "unlinked")
        forever()

    linker_pid = rebeam.spawn(linker, rebeam.self_pid())
    expect("unlinked")
    assert rebeam.process_info(target)["links"] == []
    ref = rebeam.monitor(target)
    rebeam.exit(target, "bad")
    wait_down(ref)
    assert rebeam.is_alive(linker_pid)

    other = rebeam.spawn(forever)
    rebeam.link(other)
    rebeam.unlink(other)
    ref = rebeam.monitor(other)
    rebeam.exit(other, "bad")
    assert wait_down(ref).reason == "bad"
    # we are still alive: this line runs


def test_chain_of_links_all_die():
    def chain(owner, depth):
        if depth:
            rebeam.spawn_link(chain, owner, depth - 1)
        rebeam.send(owner, ("member", rebeam.self_pid()))
        forever()

    rebeam.spawn(chain, rebeam.self_pid(), 5)
    members = [rebeam.receive(timeout=5)[1] for _ in range(6)]
    refs = [rebeam.monitor(p) for p in members]
    rebeam.exit(members[-1], "cascade")
    assert [wait_down(r).reason for r in refs] == ["cascade"] * 6


def test_linked_test_process_dies_with_child():
    def body():
        child = rebeam.spawn_link(forever)
        rebeam.exit(child, "fatal")
        forever()

    with pytest.raises(rebeam.Exit) as info:
        _, ref = rebeam.spawn_monitor(body)
        raise rebeam.Exit(None, wait_down(ref).reason)
    assert info.value.reason == "fatal"


def test_exit_comes_after_every_message_the_linked_process_sent():
    rebeam.trap_exits(True)
    me = rebeam.self_pid()

    def chatty():
        for i in range(200):
            rebeam.send(me, ("msg", i))
        raise RuntimeError("done talking")

    pid = rebeam.spawn_link(chatty)
    assert isinstance(wait_exit(pid).reason, rebeam.Crash)
    got = []
    while (m := rebeam.receive(timeout=0, default=None)) is not None:
        got.append(m[1])
    assert got == list(range(200))
