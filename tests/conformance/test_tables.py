"""Tables (ETS): kinds, access rights, ownership, heirs and concurrent use (docs/guide.md, "Shared
state without a bottleneck: tables"; docs/semantics.md, "Differences from OTP")."""

from __future__ import annotations

import itertools

import pytest

import rebeam
from _util import expect, forever, wait_down

_names = itertools.count()


def fresh():
    return f"table-{rebeam.self_pid().serial}-{next(_names)}"


def test_set_keeps_one_value_per_key():
    t = rebeam.Table(fresh(), kind="set")
    t.insert("k", 1)
    t.insert("k", 2)
    t["j"] = [1]
    assert t.lookup("k") == [2]
    assert t["j"] == [1] and t.get("missing", "d") == "d"
    assert len(t) == 2 and "k" in t and "x" not in t
    assert t.insert_new("k", 3) is False and t.insert_new("n", 3) is True
    del t["k"]
    assert t.lookup("k") == [] and len(t) == 2
    with pytest.raises(KeyError):
        t["k"]


def test_ordered_set_iterates_in_key_order():
    t = rebeam.Table(fresh(), kind="ordered_set")
    for key in [5, 1, 4, 2, 3, 1]:
        t.insert(key, str(key))
    assert t.keys() == [1, 2, 3, 4, 5]
    assert t.first() == 1 and t.next(3) == 4 and t.next(5) is None
    assert list(t.items())[:2] == [(1, "1"), (2, "2")]
    t.delete(3)
    assert t.keys() == [1, 2, 4, 5]
    assert t.update_counter(0, 7) == 7
    assert t.keys()[0] == 0


def test_set_has_no_order_promise_but_keeps_every_key():
    t = rebeam.Table(fresh(), kind="set")
    for key in range(100):
        t.insert(key, key)
    assert sorted(t.keys()) == list(range(100)) # type: ignore[type-var]


def test_bag_keeps_distinct_values_per_key():
    t = rebeam.Table(fresh(), kind="bag")
    t.insert("k", 1)
    t.insert("k", 2)
    t.insert("k", 1)
    t.insert("k", {"a": 1})
    t.insert("k", {"a": 1})
    assert t.lookup("k") == [1, 2, {"a": 1}]
    t.delete_value("k", 2)
    assert t.lookup("k") == [1, {"a": 1}]
    assert len(t) == 2


def test_duplicate_bag_keeps_every_value():
    t = rebeam.Table(fresh(), kind="duplicate_bag")
    for v in [1, 2, 1, 1]:
        t.insert("k", v)
    assert t.lookup("k") == [1, 2, 1, 1]
    t.delete_value("k", 1)
    assert t.lookup("k") == [2]
    t.delete("k")
    assert t.lookup("k") == []


def test_values_are_copied_in_and_out():
    t = rebeam.Table(fresh(), kind="set", access="public")
    value = {"list": [1]}
    t.insert("k", value)
    value["list"].append(2)
    got = t["k"]
    assert got == {"list": [1]}
    got["list"].append(3)
    assert t["k"] == {"list": [1]}


def _try(table_name, op):
    """Runs a table operation in another process; returns "ok" or the error type name."""
    me = rebeam.self_pid()

    def body():
        t = rebeam.table(table_name)
        try:
            if op == "read":
                t.lookup("k")
            else:
                t.insert("k", "other")
            rebeam.send(me, ("result", "ok"))
        except rebeam.TableError as e:
            rebeam.send(me, ("result", type(e).__name__))

    rebeam.spawn(body)
    return rebeam.receive(match=lambda m: m[0] == "result", timeout=5)[1]


def test_access_public_protected_private():
    public = rebeam.Table(fresh(), access="public")
    protected = rebeam.Table(fresh())
    private = rebeam.Table(fresh(), access="private")
    assert protected.access == "protected", "protected is the default"
    for t in (public, protected, private):
        t.insert("k", "owner")
        assert t["k"] == "owner"
    assert (_try(public.name, "read"), _try(public.name, "write")) == ("ok", "ok")
    assert (_try(protected.name, "read"), _try(protected.name, "write")) == ("ok", "TableError")
    assert (_try(private.name, "read"), _try(private.name, "write")) == (
        "TableError", "TableError")
    assert protected["k"] == "owner"


def test_bad_kind_access_and_taken_name():
    name = fresh()
    with pytest.raises(ValueError, match="kind"):
        rebeam.Table(name, kind="heap")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="access"):
        rebeam.Table(name, access="secret")  # type: ignore[arg-type]
    rebeam.Table(name)
    with pytest.raises(rebeam.NameTaken) as info:
        rebeam.Table(name)
    assert info.value.holder == rebeam.self_pid()


def test_owner_death_deletes_the_table():
    me = rebeam.self_pid()
    name = fresh()

    def owner():
        t = rebeam.Table(name, access="public")
        t.insert("k", 1)
        rebeam.send(me, "created")
        forever()

    pid, ref = rebeam.spawn_monitor(owner)
    expect("created")
    t = rebeam.table(name)
    assert t["k"] == 1
    rebeam.exit(pid, "kill")
    wait_down(ref)
    with pytest.raises(LookupError):
        rebeam.table(name)
    with pytest.raises(rebeam.TableError):
        t.lookup("k")
    rebeam.Table(name)  # the name is free again


def test_heir_inherits_the_table_and_gets_a_transfer_message():
    me = rebeam.self_pid()
    name = fresh()

    def owner():
        t = rebeam.Table(name, access="protected", heir=me, heir_data={"why": "backup"})
        t.insert("k", "v")
        rebeam.send(me, "created")
        forever()

    pid, ref = rebeam.spawn_monitor(owner)
    expect("created")
    rebeam.exit(pid, "crash")
    message = rebeam.receive(match=lambda m: isinstance(m, tuple) and m[0] == "table_transfer",
                             timeout=5)
    assert message == ("table_transfer", name, pid, {"why": "backup"})
    t = rebeam.table(name)
    assert t.owner == me
    t.insert("k2", "heir writes")  # protected: only the owner writes; we are the owner now
    assert t["k"] == "v" and t["k2"] == "heir writes"
    wait_down(ref)


def test_dead_heir_means_the_table_is_deleted():
    me = rebeam.self_pid()
    name = fresh()
    heir, href = rebeam.spawn_monitor(lambda: None)
    wait_down(href)

    def owner():
        rebeam.Table(name, heir=heir)
        rebeam.send(me, "created")
        forever()

    pid, ref = rebeam.spawn_monitor(owner)
    expect("created")
    rebeam.exit(pid, "kill")
    wait_down(ref)
    with pytest.raises(LookupError):
        rebeam.table(name)


def test_give_away_transfers_ownership():
    me = rebeam.self_pid()
    name = fresh()
    t = rebeam.Table(name)

    def new_owner():
        message = rebeam.receive(timeout=5)
        rebeam.table(name).insert("by", "new owner")
        rebeam.send(me, ("done", message))
        forever()

    pid = rebeam.spawn(new_owner)
    t.give_away(pid, "gift")
    assert rebeam.receive(timeout=5) == ("done", ("table_transfer", name, me, "gift"))
    assert t["by"] == "new owner"
    with pytest.raises(rebeam.TableError):
        t.insert("k", "old owner may not write")
    ref = rebeam.monitor(pid)
    rebeam.exit(pid, "kill")
    wait_down(ref)
    with pytest.raises(LookupError):
        rebeam.table(name)


def test_concurrent_writers_update_counter_totals_are_exact():
    t = rebeam.Table(fresh(), kind="set", access="public")
    me = rebeam.self_pid()
    writers, increments = 16, 500

    def writer(i):
        for n in range(increments):
            t.update_counter("total", 1)
            t.update_counter(("writer", i), 2)
            if n % 50 == 0:
                t.insert(("seen", i, n), n)
        rebeam.send(me, ("done", i))

    class Reader(rebeam.GenServer):
        def handle_call(self, request, sender):
            return t.get("total", 0)

    readers = [rebeam.spawn(Reader) for _ in range(4)]
    for i in range(writers):
        rebeam.spawn(writer, i)
    last = 0
    done = 0
    while done < writers:
        if rebeam.receive(timeout=0, default=None) is not None:
            done += 1
            continue
        seen = [rebeam.call(r, "total") for r in readers]
        assert all(s >= last for s in seen[:1]), "the counter never goes backwards"
        last = seen[0]
        rebeam.receive(match=lambda m: False, timeout=0.001, default=None)
    assert t["total"] == writers * increments
    assert all(t[("writer", i)] == 2 * increments for i in range(writers))
    assert len(t) == 1 + writers + writers * (increments // 50)


def test_update_counter_requires_an_int_in_a_set():
    t = rebeam.Table(fresh(), kind="set")
    t.insert("s", "text")
    with pytest.raises(rebeam.TableError):
        t.update_counter("s")
    assert t.update_counter("n", 5, default=10) == 15
    bag = rebeam.Table(fresh(), kind="bag")
    with pytest.raises(rebeam.TableError):
        bag.update_counter("n")


def test_dropped_table_is_gone():
    name = fresh()
    t = rebeam.Table(name)
    t.drop()
    with pytest.raises(rebeam.TableError):
        t.lookup("k")
    with pytest.raises(LookupError):
        rebeam.table(name)
