"""Registries: local names, the key registry and process groups (docs/semantics.md, "The model";
docs/guide.md, "Names you define")."""

from __future__ import annotations

import itertools

import pytest

import rebeam
from _util import Echo, expect, forever, wait_down

_names = itertools.count()


def fresh(prefix="name"):
    return f"{prefix}-{rebeam.self_pid().serial}-{next(_names)}"


def test_register_whereis_unregister():
    name = fresh()
    pid = rebeam.spawn(forever)
    assert rebeam.whereis(name) is None
    rebeam.register(name, pid)
    assert rebeam.whereis(name) == pid
    assert rebeam.registered()[name] == pid
    assert rebeam.process_info(pid)["name"] == name
    assert rebeam.unregister(name) is True
    assert rebeam.whereis(name) is None
    assert rebeam.unregister(name) is False
    assert rebeam.process_info(pid)["name"] is None


def test_a_taken_name_raises_name_taken_with_the_holder():
    name = fresh()
    holder = rebeam.spawn(forever)
    rebeam.register(name, holder)
    other = rebeam.spawn(forever)
    with pytest.raises(rebeam.NameTaken) as info:
        rebeam.register(name, other)
    assert info.value.holder == holder
    assert info.value.name == name
    assert str(holder) in str(info.value)
    assert isinstance(info.value, rebeam.Error)
    assert rebeam.whereis(name) == holder


def test_registering_a_dead_process_fails():
    pid, ref = rebeam.spawn_monitor(lambda: None)
    wait_down(ref)
    with pytest.raises(rebeam.Exit) as info:
        rebeam.register(fresh(), pid)
    assert info.value.reason == "noproc"


def test_a_process_has_at_most_one_name():
    pid = rebeam.spawn(forever)
    rebeam.register(fresh(), pid)
    with pytest.raises(ValueError):
        rebeam.register(fresh(), pid)


def test_name_released_on_death_before_monitors_fire():
    name = fresh()
    me = rebeam.self_pid()

    class Watcher(rebeam.GenServer):
        def init(self, target):
            self.ref = rebeam.monitor(target)

        def handle_info(self, message):
            if isinstance(message, rebeam.Down):
                rebeam.send(me, ("whereis in Down", rebeam.whereis(name)))

    for _ in range(20):  # a race would show up in some rounds
        pid = rebeam.spawn(forever)
        rebeam.register(name, pid)
        rebeam.spawn(Watcher, pid)
        ref = rebeam.monitor(pid)
        rebeam.exit(pid, "kill")
        assert wait_down(ref) and rebeam.whereis(name) is None
        assert rebeam.receive(timeout=5) == ("whereis in Down", None)


def test_name_released_before_links_fire_so_a_restart_can_take_it():
    name = fresh()
    me = rebeam.self_pid()

    def guardian():
        rebeam.trap_exits(True)
        while True:
            pid = rebeam.spawn_link(forever)
            rebeam.register(name, pid)  # raises NameTaken if the old name lingered
            rebeam.send(me, ("registered", pid))
            rebeam.receive(match=lambda m: isinstance(m, rebeam.Exit))

    g, gref = rebeam.spawn_monitor(guardian)
    first = rebeam.receive(timeout=5)[1]
    for _ in range(10):
        rebeam.exit(rebeam.whereis(name), "crash")
        nxt = rebeam.receive(match=lambda m: isinstance(m, tuple), timeout=5)
        assert nxt[0] == "registered" and nxt[1] != first
        first = nxt[1]
    assert rebeam.is_alive(g)


def test_send_call_and_cast_by_name():
    name = fresh()
    me = rebeam.self_pid()
    pid = rebeam.spawn(Echo, me)
    rebeam.register(name, pid)
    assert rebeam.call(name, "hi") == "hi"
    rebeam.cast(name, "c")
    assert expect(("cast", "c"))
    rebeam.send(name, "s")
    assert expect(("info", "s"))
    ref = rebeam.monitor(name)
    rebeam.exit(name, "kill")
    assert wait_down(ref).pid == pid


def test_unknown_name_raises_unknown_name():
    name = fresh("nobody")
    with pytest.raises(rebeam.UnknownName) as info:
        rebeam.send(name, "hello")
    assert info.value.name == name
    assert isinstance(info.value, rebeam.Error)
    with pytest.raises(rebeam.UnknownName):
        rebeam.link(name)
    with pytest.raises(rebeam.UnknownName):
        rebeam.monitor(name)


def test_call_to_an_unknown_name_raises_exit_noproc():
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(fresh("nobody"), "hello", timeout=1)
    assert info.value.reason == "noproc"


def test_invalid_names_are_refused():
    pid = rebeam.spawn(forever)
    with pytest.raises(ValueError):
        rebeam.register("", pid)
    with pytest.raises(TypeError):
        rebeam.register(42, pid)  # type: ignore[arg-type]


# -- key registry -----------------------------------------------------------------------------


def _member(owner, registry_name, keys, then="wait"):
    reg = rebeam.registry(registry_name)
    for key, value in keys:
        try:
            reg.register(key, value)
            rebeam.send(owner, ("registered", key, rebeam.self_pid()))
        except rebeam.NameTaken as e:
            rebeam.send(owner, ("taken", key, e.holder))
    while True:
        message = rebeam.receive()
        if message == "quit":
            return
        rebeam.send(owner, ("member got", rebeam.self_pid(), message))


def test_key_registry_unique_keys():
    name = fresh("reg")
    reg = rebeam.KeyRegistry(name, keys="unique")
    me = rebeam.self_pid()
    a = rebeam.spawn(_member, me, name, [("k", "va")])
    assert rebeam.receive(timeout=5) == ("registered", "k", a)
    b = rebeam.spawn(_member, me, name, [("k", "vb")])
    assert rebeam.receive(timeout=5) == ("taken", "k", a)
    assert reg.lookup("k") == [(a, "va")]
    assert reg.keys_of(a) == ["k"] and reg.keys_of(b) == []
    reg.close()


def test_key_registry_duplicate_keys_and_dispatch():
    name = fresh("reg")
    reg = rebeam.KeyRegistry(name, keys="duplicate")
    me = rebeam.self_pid()
    members = [rebeam.spawn(_member, me, name, [("topic", i)]) for i in range(3)]
    for _ in members:
        assert rebeam.receive(timeout=5)[0] == "registered"
    assert sorted(reg.lookup("topic"), key=lambda e: e[1]) == [(p, i) for i, p in
                                                                enumerate(members)]
    assert reg.count() == 3
    assert reg.dispatch("topic", {"news": 1}) == 3
    got = {rebeam.receive(timeout=5)[1] for _ in members}
    assert got == set(members)
    assert reg.dispatch("no such topic", "x") == 0
    reg.close()


def test_key_registry_entries_go_when_the_process_exits_before_down():
    name = fresh("reg")
    reg = rebeam.KeyRegistry(name, keys="unique")
    me = rebeam.self_pid()
    for _ in range(10):
        pid = rebeam.spawn(_member, me, name, [("k1", 1), ("k2", 2)])
        rebeam.receive(timeout=5)
        rebeam.receive(timeout=5)
        ref = rebeam.monitor(pid)
        rebeam.exit(pid, "kill")
        wait_down(ref)
        assert reg.lookup("k1") == [] and reg.lookup("k2") == []
        assert reg.keys_of(pid) == []
    # and after a normal exit too
    pid, ref = rebeam.spawn_monitor(_member, me, name, [("k1", 1)])
    rebeam.receive(timeout=5)
    rebeam.send(pid, "quit")
    wait_down(ref)
    assert reg.lookup("k1") == []
    reg.close()


def test_key_registry_unregister_and_names():
    name = fresh("reg")
    reg = rebeam.KeyRegistry(name)
    with pytest.raises(rebeam.NameTaken):
        rebeam.KeyRegistry(name)
    with pytest.raises(ValueError):
        rebeam.KeyRegistry(fresh("reg"), keys="several")  # type: ignore[arg-type]
    reg.register("mine", 1)
    assert reg.lookup("mine") == [(rebeam.self_pid(), 1)]
    reg.unregister("mine")
    assert reg.lookup("mine") == []
    assert rebeam.registry(name) is reg
    reg.close()
    with pytest.raises(LookupError):
        rebeam.registry(name)


# -- process groups ---------------------------------------------------------------------------


def test_pg_join_leave_members():
    group = fresh("group")
    me = rebeam.self_pid()
    a = rebeam.spawn(forever)
    b = rebeam.spawn(forever)
    rebeam.pg.join(group, a)
    rebeam.pg.join(group, b)
    rebeam.pg.join(group)
    assert sorted(rebeam.pg.members(group)) == sorted([a, b, me])
    assert group in rebeam.pg.which_groups()
    assert rebeam.pg.leave(group, b) is True
    assert rebeam.pg.leave(group, b) is False
    assert sorted(rebeam.pg.members(group)) == sorted([a, me])
    rebeam.pg.leave(group)
    rebeam.pg.leave(group, a)
    assert rebeam.pg.members(group) == []
    assert group not in rebeam.pg.which_groups()


def test_pg_broadcast():
    group = fresh("group")
    me = rebeam.self_pid()

    def member():
        rebeam.pg.join(group)
        rebeam.send(me, "joined")
        rebeam.send(me, ("got", rebeam.receive(timeout=5)))

    for _ in range(3):
        rebeam.spawn(member)
    for _ in range(3):
        expect("joined")
    assert rebeam.pg.broadcast(group, "hello") == 3
    assert [rebeam.receive(timeout=5) for _ in range(3)] == [("got", "hello")] * 3


def test_pg_members_leave_on_exit_before_down():
    group = fresh("group")
    for _ in range(10):
        pid = rebeam.spawn(forever)
        assert rebeam.pg.join(group, pid) is True
        assert rebeam.pg.join(group, pid) is False, "a process is in a group at most once"
        assert rebeam.pg.members(group) == [pid]
        ref = rebeam.monitor(pid)
        rebeam.exit(pid, "kill")
        wait_down(ref)
        assert rebeam.pg.members(group) == []


def test_cleanup_is_complete_before_a_watcher_handles_down_even_when_slow():
    # A process holding many registry keys takes the node a while to clean up after (longer
    # than the GIL switch interval, so other handlers run meanwhile): a watcher must still
    # never find the dead process under any of its keys.
    me = rebeam.self_pid()
    reg = rebeam.KeyRegistry(fresh("reg"), keys="duplicate")

    def holder():
        for i in range(100_000):
            reg.register(i)
        reg.register("probe")
        rebeam.send(me, "registered")
        forever()

    class Watcher(rebeam.GenServer):
        def init(self, target):
            rebeam.monitor(target)

        def handle_info(self, message):
            if isinstance(message, rebeam.Down):
                rebeam.send(me, ("probe in Down", reg.lookup("probe"), reg.lookup(99_999)))

    try:
        for _ in range(2):
            pid = rebeam.spawn(holder)
            expect("registered")
            rebeam.spawn(Watcher, pid)
            rebeam.exit(pid, "kill")
            assert rebeam.receive(timeout=10) == ("probe in Down", [], [])
    finally:
        reg.close()
