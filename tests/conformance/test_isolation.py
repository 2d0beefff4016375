"""Isolation: a receiver never observes a later mutation made by the sender (docs/semantics.md, "The
model")."""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass

import pytest

import rebeam
from _util import Echo, expect, wait_down


def _mirror(owner):
    """Waits for ("check", value) and reports what it holds, after the sender mutated."""
    held = rebeam.receive(timeout=5)
    rebeam.send(owner, "holding")
    rebeam.receive(match=lambda m: m == "mutated", timeout=5)
    rebeam.send(owner, ("held", held))


def test_mutating_a_sent_list_afterwards_is_not_observed():
    me = rebeam.self_pid()
    pid = rebeam.spawn(_mirror, me)
    message = [1, 2, 3]
    rebeam.send(pid, message)
    expect("holding")
    message.append(4)
    message[0] = "changed"  # type: ignore[call-overload]
    rebeam.send(pid, "mutated")
    assert rebeam.receive(timeout=5) == ("held", [1, 2, 3])


def test_mutating_a_sent_dict_afterwards_is_not_observed():
    me = rebeam.self_pid()
    pid = rebeam.spawn(_mirror, me)
    message = {"a": {"nested": [1]}}
    rebeam.send(pid, message)
    message["a"]["nested"].append(2)
    message["b"] = 1  # type: ignore[assignment]
    expect("holding")
    rebeam.send(pid, "mutated")
    assert rebeam.receive(timeout=5) == ("held", {"a": {"nested": [1]}})


def test_a_mutable_inside_a_tuple_is_copied():
    me = rebeam.self_pid()
    pid = rebeam.spawn(_mirror, me)
    inner = [1]
    rebeam.send(pid, ("tuple", inner, frozenset({1, 2})))
    inner.append(2)
    expect("holding")
    rebeam.send(pid, "mutated")
    assert rebeam.receive(timeout=5) == ("held", ("tuple", [1], frozenset({1, 2})))


def test_receiver_mutation_does_not_reach_the_sender():
    def mutator(owner):
        value = rebeam.receive(timeout=5)
        value.append("receiver")
        rebeam.send(owner, "done")

    original = ["sender"]
    pid = rebeam.spawn(mutator, rebeam.self_pid())
    rebeam.send(pid, original)
    expect("done")
    assert original == ["sender"]


def test_sending_to_self_copies_too():
    value = {"k": [1]}
    rebeam.send(rebeam.self_pid(), value)
    value["k"].append(2)
    got = rebeam.receive(timeout=1)
    assert got == {"k": [1]}
    assert got is not value


def test_call_request_and_reply_are_copied():
    class Keeper(rebeam.GenServer):
        def init(self):
            self.kept = None

        def handle_call(self, request, sender):
            if request == "get":
                return self.kept
            self.kept = request
            return self.kept

    pid = rebeam.spawn(Keeper)
    request = ["x"]
    reply = rebeam.call(pid, request)
    request.append("mutated by caller")
    reply.append("mutated by caller too")
    assert rebeam.call(pid, "get") == ["x"]


def test_immutable_values_arrive_equal():
    me = rebeam.self_pid()
    values = [None, True, False, 0, -7, 2**100, 1.5, "text", b"bytes", (1, ("a", b"b")),
              frozenset({1, "a"}), me, ("pid in tuple", me)]
    pid = rebeam.spawn(Echo)
    for value in values:
        rebeam.send(me, value)
        assert rebeam.receive(timeout=1) == value
        assert rebeam.call(pid, value) == value


@dataclass
class Point:
    x: int
    y: list


def test_plain_data_classes_are_copied():
    me = rebeam.self_pid()
    pid = rebeam.spawn(_mirror, me)
    point = Point(1, [2])
    rebeam.send(pid, point)
    point.y.append(3)
    expect("holding")
    rebeam.send(pid, "mutated")
    assert rebeam.receive(timeout=5) == ("held", Point(1, [2]))


def test_unpicklable_object_raises_type_error_naming_the_type():
    lock = threading.Lock()
    with pytest.raises(TypeError, match="lock"):
        rebeam.send(rebeam.self_pid(), lock)
    with pytest.raises(TypeError, match="generator"):
        rebeam.send(rebeam.self_pid(), ("wrapped", [(x for x in range(3))]))
    pid = rebeam.spawn(Echo)
    with pytest.raises(TypeError, match="lock"):
        rebeam.call(pid, {"lock": lock})
    with pytest.raises(TypeError, match="lock"):
        rebeam.cast(pid, lock)
    # nothing was delivered (a self-send lands in order, so the sentinel comes first), and
    # the sender is still fine
    rebeam.send(rebeam.self_pid(), "sentinel")
    assert rebeam.receive(timeout=1) == "sentinel"
    assert rebeam.call(pid, "still fine") == "still fine"


def test_unpicklable_reply_fails_the_call_not_silently():
    class BadReply(rebeam.GenServer):
        def handle_call(self, request, sender):
            return threading.Lock()

    pid, ref = rebeam.spawn_monitor(BadReply)
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(pid, "give me a lock", timeout=5)
    assert isinstance(info.value.reason, rebeam.Crash)
    assert info.value.reason.type == "TypeError" and "lock" in info.value.reason.message
    assert wait_down(ref).reason == info.value.reason, "the server crashed on its reply"


def test_shared_tuples_leave_the_cycle_collector():
    # Mail queued in a burst is walked by every young collection the sender sets off while
    # its tuples are tracked; a tuple of immutable values can hold no cycle, so a send stops
    # the collector tracking it (as CPython itself does once its collector looks).
    me = rebeam.self_pid()
    number = len(str(me))  # built at run time: constant tuples are made by the compiler
    flat = ("inc", b"payload", number, me)
    nested = ("outer", ("inner", float(number)))
    mutable = ("list", [number])
    for value in (flat, nested, mutable):
        assert gc.is_tracked(value)
        rebeam.send(me, value)
        assert rebeam.receive(timeout=1) == value
    assert not gc.is_tracked(flat)
    assert not gc.is_tracked(nested) and not gc.is_tracked(nested[1])
    assert gc.is_tracked(mutable), "a tuple holding a list may be in a cycle"
