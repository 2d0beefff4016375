"""One error vocabulary: every exception derives from rebeam.Error, and a crash reaching a
caller is also an instance of the original exception type where it can be rebuilt."""

from __future__ import annotations

import pickle

import pytest

import rebeam
from _util import Echo


class Lookup(rebeam.GenServer):
    def handle_call(self, request, sender):
        return {}[request]


class Custom(Exception):
    pass


class Strange(rebeam.GenServer):
    def handle_call(self, request, sender):
        raise Custom(request)


def test_a_remote_key_error_is_caught_as_key_error():
    pid = rebeam.spawn(Lookup)
    with pytest.raises(KeyError) as info:
        rebeam.call(pid, "missing")
    err = info.value
    assert isinstance(err, rebeam.Exit) and isinstance(err, rebeam.Error)
    assert err.pid == pid
    assert isinstance(err.reason, rebeam.Crash)
    assert err.reason.type == "KeyError"
    assert "return {}[request]" in err.reason.traceback


def test_a_crash_of_a_class_the_caller_cannot_rebuild_is_a_plain_exit():
    pid = rebeam.spawn(Strange)
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(pid, "x")
    assert type(info.value) is rebeam.Exit
    assert info.value.reason.type == "Custom"


def test_the_rebuilt_exit_pickles_and_compares_as_an_exit():
    pid = rebeam.spawn(Echo)
    with pytest.raises(RuntimeError) as info:
        rebeam.call(pid, ("crash", "boom"))
    again = pickle.loads(pickle.dumps(info.value))
    assert again == info.value and isinstance(again, RuntimeError)
    assert rebeam.Exit(pid, "noproc") == rebeam.Exit(pid, "noproc")


def test_trapped_exit_messages_compare_with_plain_exits():
    rebeam.trap_exits(True)
    pid = rebeam.spawn_link(Echo)
    with pytest.raises(rebeam.Exit):
        rebeam.call(pid, ("crash", "x"))
    message = rebeam.receive(lambda m: isinstance(m, rebeam.Exit) and m.pid == pid, timeout=5)
    assert isinstance(message, RuntimeError)
    assert message.reason.message == "x"  # type: ignore[attr-defined]


def test_controller_failures_are_the_client_classes():
    from rebeam.client import NotFound as ClientNotFound
    from rebeam.client import Unavailable as ClientUnavailable

    assert ClientNotFound is rebeam.NotFound and ClientUnavailable is rebeam.Unavailable
    err = rebeam._errors.controller_error("UNAVAILABLE", "no leader")
    assert isinstance(err, rebeam.Unavailable) and isinstance(err, ConnectionError)
    assert err.code == "UNAVAILABLE" and str(err) == "no leader"
    assert isinstance(rebeam._errors.controller_error("NOT_FOUND", "x"), LookupError)
    assert isinstance(rebeam._errors.controller_error("INVALID_ARGUMENT", "x"), ValueError)
