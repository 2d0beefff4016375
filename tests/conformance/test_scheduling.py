"""Where servers run: a server queued by a handler is run by the executor that queued it when
that handler returns, and at once by another when the handler blocks outside Re:BEAM; a busy
server alone in the run queue keeps its thread (docs/semantics.md, "The model"); a call with
a timeout under 10 ms never runs on the caller's thread (difference 11)."""

from __future__ import annotations

import threading
import time

import pytest

import rebeam
from _util import WAIT
from rebeam._native import native


def tagged(tag, timeout=WAIT):
    """The value of the first ``(tag, value)`` message."""
    return rebeam.receive(match=lambda m: isinstance(m, tuple) and m[:1] == (tag,),
                          timeout=timeout)[1]


class Recorder(rebeam.GenServer):
    """Tells ``who`` which thread ran its handler."""

    def handle_cast(self, who):
        rebeam.send(who, ("recorder", threading.get_ident()))


class Pusher(rebeam.GenServer):
    """Casts to ``recorder``, then holds or gives up the interpreter for a while."""

    def handle_cast(self, request):
        recorder, who, hold, seconds = request
        rebeam.cast(recorder, who)
        if hold:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(seconds)
        rebeam.send(who, ("pusher", threading.get_ident()))


class Counter(rebeam.GenServer):
    def init(self):
        self.n = 0

    def handle_cast(self, request):
        self.n += 1

    def handle_call(self, request, sender):
        return self.n


def test_a_server_queued_by_a_handler_runs_on_that_handlers_thread():
    # The handler goes on for 2 ms after its cast, holding the interpreter (less than the
    # interpreter's 5 ms switch interval): an idle executor woken for the recorder must not
    # take it and then wait for the interpreter, or every message of a chain of servers
    # would hand the interpreter from one thread to the other.
    me = rebeam.self_pid()
    pusher, recorder = rebeam.spawn(Pusher), rebeam.spawn(Recorder)
    same = 0
    for _ in range(20):
        rebeam.cast(pusher, (recorder, me, True, 0.002))
        ran_on, pushed_on = tagged("recorder"), tagged("pusher")
        same += ran_on == pushed_on
    # A repeat may lose to the switch interval on a loaded machine; the old scheduling
    # lost nearly every one.
    assert same >= 16, f"{20 - same} of 20 servers queued by a handler ran on another thread"


def test_a_server_queued_by_a_blocked_handler_runs_at_once():
    # The handler sleeps outside Re:BEAM after its cast: another executor runs the recorder
    # long before the sleep ends.
    me = rebeam.self_pid()
    pusher, recorder = rebeam.spawn(Pusher), rebeam.spawn(Recorder)
    start = time.monotonic()
    rebeam.cast(pusher, (recorder, me, False, 3.0))
    tagged("recorder", timeout=2.0)
    assert time.monotonic() - start < 1.0
    tagged("pusher", timeout=10.0)


def test_a_busy_server_alone_keeps_its_thread():
    # The sender holds the interpreter while it casts, so the mail piles up; the server then
    # handles it in batches of 64. Alone in the run queue it goes on from batch to batch:
    # re-queueing itself after each would wake an idle executor for nothing.
    counter = rebeam.spawn(Counter)
    casts = 20_000
    me = rebeam.self_pid()
    before = native.stats()["scheduled"]

    def blast():
        for _ in range(casts):
            rebeam.cast(counter, "inc")
        rebeam.send(me, ("count", rebeam.call(counter, "count", timeout=30)))

    rebeam.spawn(blast)
    assert tagged("count", timeout=60) == casts
    scheduled = native.stats()["scheduled"] - before
    assert scheduled < casts // 128, f"scheduled {scheduled} times for {casts} casts"


RELEASE = threading.Event()
RETURNED = threading.Event()


class Held(rebeam.GenServer):
    """``ping`` answers at once; ``hold`` waits until the test releases it."""

    def handle_call(self, request, sender):
        if request == "hold":
            RELEASE.wait(timeout=30)
            RETURNED.set()
        return request


def test_a_short_timeout_is_exact_even_for_a_warm_server():
    # A warm server (fast calls answered before) may run its handler on the caller's thread,
    # where the caller cannot be given its Timeout before the handler returns. A timeout
    # shorter than 10 ms (the handler time that ends the shortcut for good) never takes it.
    RELEASE.clear()
    RETURNED.clear()
    server = rebeam.spawn(Held)
    for _ in range(10):
        assert rebeam.call(server, "ping") == "ping"
    try:
        with pytest.raises(rebeam.Timeout):
            rebeam.call(server, "hold", timeout=0.005)
        assert not RETURNED.is_set(), "the Timeout waited for the handler"
    finally:
        RELEASE.set()
    assert rebeam.call(server, "ping", timeout=5) == "ping"
