"""The rate limiter and the session store (run with rebeam.testing)."""

from __future__ import annotations

import time

import rebeam
from rebeam.testing import assert_down
from sessions import FRONT, allow, delete_session, get_session, put_session


def test_a_client_gets_its_burst_then_is_limited_then_refills(app: rebeam.Pid) -> None:
    client = ("ip", "10.0.0.1")
    granted = [allow(client) for _ in range(12)]
    assert granted[:10] == [True] * 10 and granted[10:] == [False, False]
    assert allow(("ip", "10.0.0.2"))  # other clients have their own bucket
    deadline = time.monotonic() + 5
    while not allow(client):  # 5 tokens per second: one comes back within ~0.2 s
        assert time.monotonic() < deadline
        rebeam.receive(timeout=0.02, default=None)


def test_sessions_are_stored_read_from_the_table_and_deleted(app: rebeam.Pid) -> None:
    put_session("s1", {"user": "ann"})
    assert get_session("s1") == {"user": "ann"}
    assert rebeam.table("sessions.store").get("s1")[0] == {"user": "ann"}
    delete_session("s1")
    assert get_session("s1") is None


def test_a_session_expires(app: rebeam.Pid) -> None:
    put_session("short", "x", ttl=0.05)
    assert get_session("short") == "x"
    deadline = time.monotonic() + 5
    while rebeam.table("sessions.store").get("short") is not None:  # the front's sweep
        assert time.monotonic() < deadline
        rebeam.receive(timeout=0.01, default=None)
    assert get_session("short") is None


def test_only_the_front_writes_the_tables(app: rebeam.Pid) -> None:
    try:
        rebeam.table("sessions.store").insert("forged", ("x", 1e18))
    except rebeam.TableError:
        pass
    else:
        raise AssertionError("a protected table took a write from another process")


def test_a_crashed_front_is_restarted_under_its_global_name(app: rebeam.Pid) -> None:
    front = rebeam.whereis(FRONT)
    assert front is not None
    rebeam.exit(front, "kill")
    assert_down(front)
    deadline = time.monotonic() + 5
    while rebeam.whereis(FRONT) in (None, front):
        assert time.monotonic() < deadline
        rebeam.receive(timeout=0.01, default=None)
    assert allow(("ip", "fresh"))
    put_session("after", 1)
    assert get_session("after") == 1
