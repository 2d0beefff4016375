"""User-defined registries: ``Via(registry, key)`` works wherever a name works (OTP's
``{via, Module, Name}``), and the names go when their process exits."""

from __future__ import annotations

import itertools
import threading
from typing import Any, Literal

import pytest

import rebeam
from _util import Echo, expect, forever, nothing, wait_down, wait_exit

_serial = itertools.count()


def fresh_registry(keys: Literal["unique", "duplicate"] = "unique") -> rebeam.KeyRegistry:
    return rebeam.KeyRegistry(f"via-{rebeam.self_pid().serial}-{next(_serial)}", keys=keys)


class DictRegistry:
    """The smallest user-defined registry: a dict, with no ``send`` of its own."""

    def __init__(self) -> None:
        self.names: dict[Any, rebeam.Pid] = {}
        self.lock = threading.Lock()
        self.unregistered: list[Any] = []

    def register_name(self, key: Any, pid: rebeam.Pid) -> bool:
        with self.lock:
            if key in self.names:
                return False
            self.names[key] = pid
            return True

    def unregister_name(self, key: Any) -> None:
        with self.lock:
            self.names.pop(key, None)
            self.unregistered.append(key)

    def whereis_name(self, key: Any) -> rebeam.Pid | None:
        return self.names.get(key)


class SendingRegistry(DictRegistry):
    """A registry that routes sends itself (OTP's optional ``send/2``): tags every message."""

    def send(self, key: Any, message: Any) -> None:
        pid = self.whereis_name(key)
        if pid is None:
            raise rebeam.UnknownName(key)
        rebeam.send(pid, ("via", key, message))


def test_a_key_registry_backs_send_cast_call_and_whereis():
    reg = fresh_registry()
    me = rebeam.self_pid()
    pid = rebeam.spawn(Echo, me)
    name = rebeam.Via(reg, "echo")
    rebeam.register(name, pid)
    assert rebeam.whereis(name) == pid
    assert reg.whereis_name("echo") == pid
    assert rebeam.call(name, "hello") == "hello"
    rebeam.cast(name, "c")
    assert expect(("cast", "c")) == ("cast", "c")
    rebeam.send(name, "i")
    assert expect(("info", "i")) == ("info", "i")
    rebeam.send_after(0.01, name, "later")
    assert expect(("info", "later")) == ("info", "later")


def test_a_name_nobody_holds_behaves_as_a_local_one():
    name = rebeam.Via(fresh_registry(), "nobody")
    assert rebeam.whereis(name) is None
    with pytest.raises(rebeam.UnknownName):
        rebeam.send(name, "x")
    rebeam.cast(name, "ignored")  # as gen_server:cast, no error
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(name, "x")
    assert info.value.reason == "noproc"
    with pytest.raises(rebeam.UnknownName):
        rebeam.monitor(name)


def test_monitor_link_and_exit_through_a_via_name():
    reg = DictRegistry()
    pid = rebeam.spawn(forever)
    name = rebeam.Via(reg, ("worker", 1))
    rebeam.register(name, pid)
    ref = rebeam.monitor(name)
    rebeam.trap_exits(True)
    rebeam.link(name)
    rebeam.exit(name, "bye")
    assert wait_down(ref).reason == "bye"
    assert wait_exit(pid).reason == "bye"


def test_the_name_is_released_when_its_process_exits():
    reg = DictRegistry()
    pid, ref = rebeam.spawn_monitor(forever)
    rebeam.register(rebeam.Via(reg, "k"), pid)
    assert reg.names == {"k": pid}
    rebeam.exit(pid, "kill")
    wait_down(ref)
    # The node releases a process's names before its monitors fire.
    assert reg.names == {}
    assert reg.unregistered == ["k"]


def test_a_successor_keeps_the_name_when_the_old_holder_exits_late():
    reg = DictRegistry()
    old, ref = rebeam.spawn_monitor(forever)
    rebeam.register(rebeam.Via(reg, "k"), old)
    reg.unregister_name("k")  # handed over by the registry's own logic
    new = rebeam.spawn(forever)
    rebeam.register(rebeam.Via(reg, "k"), new)
    rebeam.exit(old, "kill")
    wait_down(ref)
    assert reg.whereis_name("k") == new


def test_a_taken_key_raises_name_taken_with_the_holder():
    reg = fresh_registry()
    holder = rebeam.spawn(forever)
    rebeam.register(rebeam.Via(reg, "k"), holder)
    with pytest.raises(rebeam.NameTaken) as info:
        rebeam.register(rebeam.Via(reg, "k"), rebeam.spawn(forever))
    assert info.value.holder == holder


def test_unregister_removes_the_name():
    reg = DictRegistry()
    pid = rebeam.spawn(forever)
    name = rebeam.Via(reg, "k")
    rebeam.register(name, pid)
    assert rebeam.unregister(name) is True
    assert rebeam.whereis(name) is None
    assert rebeam.unregister(name) is False


def test_a_registry_with_its_own_send_routes_sends():
    reg = SendingRegistry()
    rebeam.register(rebeam.Via(reg, "me"), rebeam.self_pid())
    rebeam.send(rebeam.Via(reg, "me"), "hi")
    assert expect(("via", "me", "hi")) == ("via", "me", "hi")


def test_an_object_that_is_not_a_registry_is_refused_at_once():
    with pytest.raises(TypeError, match="register_name"):
        rebeam.Via(object(), "k")  # type: ignore[arg-type]


def test_a_duplicate_key_registry_cannot_back_a_name():
    reg = fresh_registry("duplicate")
    with pytest.raises(TypeError, match="unique"):
        rebeam.register(rebeam.Via(reg, "k"), rebeam.spawn(forever))


def test_a_supervised_child_named_by_via_is_found_again_after_a_restart():
    reg = fresh_registry()
    name = rebeam.Via(reg, "echo")

    class Sup(rebeam.Supervisor):
        def children(self):
            return [rebeam.child(Echo, name=name)]

    sup = rebeam.spawn(Sup)
    first = rebeam.whereis(name)
    assert first is not None and rebeam.call(name, "ping") == "ping"
    ref = rebeam.monitor(first)
    rebeam.exit(first, "kill")
    wait_down(ref)
    deadline_pid = None
    for _ in range(500):
        deadline_pid = rebeam.whereis(name)
        if deadline_pid is not None and deadline_pid != first:
            break
        nothing(0.01)
    assert deadline_pid is not None and deadline_pid != first
    assert rebeam.call(name, "again") == "again"
    assert [p for _, p, _ in rebeam.which_children(sup)] == [deadline_pid]


class MisbehavingRegistry(DictRegistry):
    """A registry whose ``whereis_name`` answers something that is not a pid."""

    def whereis_name(self, key: Any) -> Any:
        return "not a pid"


def test_a_cast_through_a_registry_that_answers_no_pid_raises():
    # `rebeam.cast` resolves a Via name in the node's own function: the registry's answer is
    # checked there too.
    with pytest.raises(TypeError, match="must return a Pid"):
        rebeam.cast(rebeam.Via(MisbehavingRegistry(), "x"), "hello")


def test_a_cast_to_something_that_is_no_destination_raises_type_error():
    with pytest.raises(TypeError, match=r"Via\(registry, key\)"):
        rebeam.cast(42, "hello")  # type: ignore[arg-type]
