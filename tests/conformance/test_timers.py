"""Timers: send_after, cancel_timer and GenServer timeouts (docs/semantics.md, "The model")."""

from __future__ import annotations

import time

import pytest

import rebeam
from _util import forever, nothing


def test_send_after_delivers_after_the_delay():
    start = time.monotonic()
    ref = rebeam.send_after(0.05, rebeam.self_pid(), "tick")
    assert isinstance(ref, rebeam.Ref)
    assert rebeam.receive(timeout=5) == "tick"
    assert time.monotonic() - start >= 0.045


def test_timers_fire_in_deadline_order_not_creation_order():
    me = rebeam.self_pid()
    for delay, label in [(0.09, "c"), (0.03, "a"), (0.06, "b"), (0.0, "now")]:
        rebeam.send_after(delay, me, label)
    assert [rebeam.receive(timeout=5) for _ in range(4)] == ["now", "a", "b", "c"]


def test_many_timers_with_the_same_delay_keep_creation_order():
    me = rebeam.self_pid()
    for i in range(200):
        rebeam.send_after(0.02, me, i)
    assert [rebeam.receive(timeout=5) for _ in range(200)] == list(range(200))


def test_cancel_timer_returns_remaining_time_and_stops_it():
    ref = rebeam.send_after(10.0, rebeam.self_pid(), "never")
    remaining = rebeam.cancel_timer(ref)
    assert 9.0 < remaining <= 10.0
    assert rebeam.cancel_timer(ref) is None, "a cancelled timer is gone"


def test_cancel_timer_after_firing_returns_none():
    ref = rebeam.send_after(0.0, rebeam.self_pid(), "fired")
    assert rebeam.receive(timeout=5) == "fired"
    assert rebeam.cancel_timer(ref) is None


def test_cancelled_timer_never_delivers():
    ref = rebeam.send_after(0.05, rebeam.self_pid(), "cancelled")
    assert rebeam.cancel_timer(ref) is not None
    assert nothing(0.15)


def test_send_after_by_name_and_to_dead_process():
    name = f"timer-target-{rebeam.self_pid().serial}"
    rebeam.register(name, rebeam.self_pid())
    rebeam.send_after(0.01, name, "by name")
    assert rebeam.receive(timeout=5) == "by name"
    rebeam.unregister(name)
    with pytest.raises(rebeam.UnknownName):
        rebeam.send_after(0.01, name, "x")
    pid, ref = rebeam.spawn_monitor(forever)
    rebeam.send_after(0.01, pid, "to the dead")
    rebeam.exit(pid, "kill")
    assert isinstance(rebeam.receive(timeout=5), rebeam.Down)  # and nothing crashes


def test_send_after_copies_the_message_at_once():
    value = [1]
    rebeam.send_after(0.02, rebeam.self_pid(), value)
    value.append(2)
    assert rebeam.receive(timeout=5) == [1]


def test_send_after_rejects_bad_delays_and_values():
    with pytest.raises(ValueError):
        rebeam.send_after(-1, rebeam.self_pid(), "x")
    import threading

    with pytest.raises(TypeError):
        rebeam.send_after(0.1, rebeam.self_pid(), threading.Lock())


def test_genserver_timer_to_self():
    class Ticker(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner
            self.ticks = 0
            rebeam.send_after(0.01, rebeam.self_pid(), "tick")

        def handle_info(self, message):
            self.ticks += 1
            if self.ticks < 3:
                rebeam.send_after(0.01, rebeam.self_pid(), "tick")
            else:
                rebeam.send(self.owner, ("ticked", self.ticks))

    rebeam.spawn(Ticker, rebeam.self_pid())
    assert rebeam.receive(timeout=5) == ("ticked", 3)
