"""Trapping exits: Exit messages, kill is untrappable, killed propagates (docs/semantics.md, "The model")."""

from __future__ import annotations

from collections.abc import Callable

import rebeam
from _util import expect, forever, wait_down, wait_exit


def test_trapped_exit_signals_arrive_as_exit_messages():
    rebeam.trap_exits(True)
    child = rebeam.spawn_link(forever)
    rebeam.exit(child, "crash-like")
    message = wait_exit(child)
    assert isinstance(message, rebeam.Exit)
    assert (message.pid, message.reason) == (child, "crash-like")
    rebeam.trap_exits(False)


def test_normal_exit_of_a_link_is_a_message_when_trapping():
    rebeam.trap_exits(True)
    child = rebeam.spawn_link(lambda: None)
    assert wait_exit(child).reason == "normal"


def test_exit_signal_sent_to_a_trapping_process_is_a_message():
    def trapper(owner):
        rebeam.trap_exits(True)
        rebeam.send(owner, "trapping")
        message = rebeam.receive(timeout=5)
        rebeam.send(owner, ("got", message))

    pid = rebeam.spawn(trapper, rebeam.self_pid())
    expect("trapping")
    rebeam.exit(pid, "shutdown")
    assert rebeam.receive(timeout=5) == ("got", rebeam.Exit(rebeam.self_pid(), "shutdown"))


def test_trap_exits_returns_previous_setting():
    assert rebeam.trap_exits(True) is False
    assert rebeam.trap_exits(False) is True
    assert rebeam.process_info(rebeam.self_pid())["trap_exit"] is False


def test_kill_cannot_be_trapped():
    def trapper(owner):
        rebeam.trap_exits(True)
        rebeam.send(owner, "trapping")
        forever()

    pid, ref = rebeam.spawn_monitor(trapper, rebeam.self_pid())
    expect("trapping")
    rebeam.exit(pid, "kill")
    assert wait_down(ref).reason == "killed"


def test_killed_reason_propagates_as_trappable_killed():
    rebeam.trap_exits(True)

    def middle(owner):
        rebeam.trap_exits(True)
        victim = rebeam.spawn_link(forever)
        rebeam.send(owner, ("victim", victim))
        rebeam.send(owner, ("middle got", wait_exit(victim)))
        forever()

    middle_pid = rebeam.spawn_link(middle, rebeam.self_pid())
    _, victim = rebeam.receive(match=lambda m: m[0] == "victim", timeout=5)
    rebeam.exit(victim, "kill")
    _, message = rebeam.receive(match=lambda m: m[0] == "middle got", timeout=5)
    assert message.reason == "killed", "a linked trapper sees 'killed', not 'kill'"
    assert rebeam.is_alive(middle_pid), "'killed' reaching a link is trappable"


def test_killed_kills_non_trapping_links():
    def middle(owner):
        victim = rebeam.spawn_link(forever)
        rebeam.send(owner, victim)
        forever()

    pid, ref = rebeam.spawn_monitor(middle, rebeam.self_pid())
    victim = rebeam.receive(timeout=5)
    rebeam.exit(victim, "kill")
    assert wait_down(ref).reason == "killed"


def test_trapping_process_survives_linked_crash():
    rebeam.trap_exits(True)

    def crasher():
        raise OSError("disk")

    child = rebeam.spawn_link(crasher)
    message = wait_exit(child)
    assert isinstance(message.reason, rebeam.Crash)
    assert message.reason.type == "OSError"


def test_stopping_trap_makes_signals_fatal_again():
    def flips(owner):
        rebeam.trap_exits(True)
        rebeam.trap_exits(False)
        rebeam.send(owner, "ready")
        forever()

    pid, ref = rebeam.spawn_monitor(flips, rebeam.self_pid())
    expect("ready")
    rebeam.exit(pid, "shutdown")
    assert wait_down(ref).reason == "shutdown"


def test_exit_messages_are_equal_values():
    me = rebeam.self_pid()
    assert rebeam.Exit(me, "normal") == rebeam.Exit(me, "normal")
    assert rebeam.Exit(me, "normal") != rebeam.Exit(me, "shutdown")
    e = rebeam.Exit(me, "x")
    assert (e.pid, e.reason) == (me, "x")


def test_exit_normal_sent_to_a_trapping_process_is_a_message():
    rebeam.trap_exits(True)
    other = rebeam.spawn(forever)

    def sender(target):
        rebeam.exit(target, "normal")

    pid = rebeam.spawn(sender, rebeam.self_pid())
    assert wait_exit(pid).reason == "normal"
    assert rebeam.is_alive(other)


def test_exit_to_self_while_trapping_is_a_message():
    rebeam.trap_exits(True)
    me = rebeam.self_pid()
    rebeam.exit(me, "shutdown")
    assert wait_exit(me, timeout=1).reason == "shutdown"


def kill_a_swallower(zombie: Callable[[], None]) -> None:
    """Kills a process that swallows the kill and then calls `zombie` three times."""
    me = rebeam.self_pid()

    def swallower():
        try:
            rebeam.send(me, "ready")
            forever()
        except BaseException:  # noqa: B036 - the point of the test
            pass
        for _ in range(3):
            try:
                zombie()
            except BaseException:  # noqa: B036
                pass

    pid, ref = rebeam.spawn_monitor(swallower)
    expect("ready")
    rebeam.exit(pid, "kill")
    assert wait_down(ref).reason == "killed"


def test_killed_code_that_swallows_the_kill_cannot_send():
    me = rebeam.self_pid()
    kill_a_swallower(lambda: rebeam.send(me, "zombie"))
    # Signals from one process arrive in order: a "zombie" sent before it died would already
    # be queued ahead of its Down, so looking without waiting is exact.
    assert rebeam.receive(match=lambda m: m == "zombie", timeout=0, default=None) is None


class Recorder(rebeam.GenServer):
    """Keeps the casts it gets; a call answers with them."""

    def init(self) -> None:
        self.casts: list[object] = []

    def handle_cast(self, request: object) -> None:
        self.casts.append(request)

    def handle_call(self, request: object, sender: object) -> object:
        return list(self.casts)


def test_killed_code_that_swallows_the_kill_cannot_cast():
    sink = rebeam.spawn(Recorder)
    kill_a_swallower(lambda: rebeam.cast(sink, "zombie"))
    # The recorder answers calls in order with its casts: one sent before the Down was seen
    # would be queued ahead of this call.
    assert rebeam.call(sink, "casts") == []
    rebeam.exit(sink, "kill")


def test_trapping_exits_is_a_context_manager_that_restores_the_setting():
    assert rebeam.trap_exits(False) is False
    with rebeam.trapping_exits():
        pid = rebeam.spawn_link(forever)
        rebeam.exit(pid, "bye")
        assert wait_exit(pid).reason == "bye"
    assert rebeam.trap_exits(False) is False  # restored
