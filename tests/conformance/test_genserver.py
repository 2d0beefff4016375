"""GenServer: callbacks, stop, terminate, crashes, idle timeouts, init failure (docs/semantics.md,
"GenServer and Supervisor")."""

from __future__ import annotations

import time

import pytest

import rebeam
from _util import expect, forever, nothing, wait_down, wait_exit, warm
from rebeam._native import native


class Recorder(rebeam.GenServer):
    """Reports every callback to its owner."""

    def init(self, owner, start=0, *, step=1):
        self.owner = owner
        self.n = start
        self.step = step
        rebeam.send(owner, ("init", start, step))

    def handle_call(self, request, sender):
        match request:
            case "get":
                return self.n
            case "whoami":
                return sender.pid
            case ("stop", reason):
                rebeam.stop(reason)
                rebeam.send(self.owner, ("stop requested", reason))
                return "bye"
            case "crash":
                raise ValueError("crashed in handle_call")
        return ("unknown", request)

    def handle_cast(self, request):
        if request == "crash":
            raise ValueError("crashed in handle_cast")
        self.n += request * self.step

    def handle_info(self, message):
        rebeam.send(self.owner, ("info", message))

    def terminate(self, reason):
        rebeam.send(self.owner, ("terminate", reason, self.n))


def test_init_args_and_state_on_self():
    me = rebeam.self_pid()
    pid = rebeam.spawn(Recorder, me, 10, step=2)
    assert rebeam.receive(timeout=5) == ("init", 10, 2)
    rebeam.cast(pid, 5)
    rebeam.cast(pid, 1)
    assert rebeam.call(pid, "get") == 22


def test_init_runs_before_spawn_returns():
    me = rebeam.self_pid()
    rebeam.spawn(Recorder, me)
    assert rebeam.receive(timeout=0) == ("init", 0, 1)


def test_handle_call_gets_the_sender():
    pid = rebeam.spawn(Recorder, rebeam.self_pid())
    assert rebeam.call(pid, "whoami") == rebeam.self_pid()


def test_casts_and_calls_from_one_sender_are_handled_in_order():
    pid = rebeam.spawn(Recorder, rebeam.self_pid())
    for _ in range(500):
        rebeam.cast(pid, 1)
    assert rebeam.call(pid, "get") == 500


def test_handle_info_gets_raw_sends_and_timer_messages():
    me = rebeam.self_pid()
    pid = rebeam.spawn(Recorder, me)
    rebeam.send(pid, {"raw": 1})
    assert expect(("info", {"raw": 1}))
    rebeam.send_after(0.01, pid, "tick")
    assert expect(("info", "tick"))


def test_handle_info_gets_exit_when_trapping():
    class Trapper(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner
            rebeam.trap_exits(True)
            self.child = rebeam.spawn_link(forever)

        def handle_call(self, request, sender):
            return self.child

        def handle_info(self, message):
            rebeam.send(self.owner, message)

    pid = rebeam.spawn(Trapper, rebeam.self_pid())
    child = rebeam.call(pid, "child")
    rebeam.exit(child, "oops")
    assert rebeam.receive(timeout=5) == rebeam.Exit(child, "oops")
    assert rebeam.is_alive(pid)


def test_stop_takes_effect_after_the_handler_returns_and_calls_terminate():
    me = rebeam.self_pid()
    pid, ref = rebeam.spawn_monitor(Recorder, me)
    expect(("init", 0, 1))
    assert rebeam.call(pid, ("stop", "normal")) == "bye", "the reply is still sent"
    assert rebeam.receive(timeout=5) == ("stop requested", "normal")
    assert rebeam.receive(timeout=5) == ("terminate", "normal", 0)
    assert wait_down(ref).reason == "normal"


def test_stop_with_a_custom_reason_propagates_to_links():
    rebeam.trap_exits(True)
    pid = rebeam.spawn_link(Recorder, rebeam.self_pid())
    rebeam.call(pid, ("stop", ("shutdown", "done")))
    assert wait_exit(pid).reason == ("shutdown", "done")
    assert expect(("terminate", ("shutdown", "done"), 0))


def test_crash_calls_terminate_and_exits_with_crash_and_traceback():
    me = rebeam.self_pid()
    pid, ref = rebeam.spawn_monitor(Recorder, me)
    rebeam.cast(pid, 3)
    rebeam.cast(pid, "crash")
    message = rebeam.receive(match=lambda m: m[0] == "terminate", timeout=5)
    reason = message[1]
    assert isinstance(reason, rebeam.Crash)
    assert message[2] == 3, "terminate sees the state"
    assert reason.type == "ValueError"
    assert reason.message == "crashed in handle_cast"
    assert "Traceback (most recent call last)" in reason.traceback
    assert "handle_cast" in reason.traceback and "test_genserver.py" in reason.traceback
    assert wait_down(ref).reason == reason


def test_crash_in_handle_call_fails_the_caller_with_the_crash():
    pid = rebeam.spawn(Recorder, rebeam.self_pid())
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(pid, "crash")
    assert info.value.reason.type == "ValueError"
    assert expect(("terminate", info.value.reason, 0))


def test_terminate_not_called_when_killed_by_an_exit_signal_without_trapping():
    pid, ref = rebeam.spawn_monitor(Recorder, rebeam.self_pid())
    rebeam.exit(pid, "shutdown")
    assert wait_down(ref).reason == "shutdown"
    assert nothing(0.1, match=lambda m: m[0] == "terminate"), "OTP: no terminate"


def test_terminate_called_on_parent_shutdown_when_trapping():
    class Trapping(Recorder):
        def init(self, owner):  # type: ignore[override]
            super().init(owner)
            rebeam.trap_exits(True)

    me = rebeam.self_pid()

    def parent():
        child = rebeam.spawn_link(Trapping, me)
        rebeam.send(me, ("child", child))
        forever()

    parent_pid = rebeam.spawn(parent)
    child = rebeam.receive(match=lambda m: m[0] == "child", timeout=5)[1]
    ref = rebeam.monitor(child)
    rebeam.exit(parent_pid, "shutdown")
    assert expect(("terminate", "shutdown", 0))
    assert wait_down(ref).reason == "shutdown"


def test_unhandled_call_and_cast_crash_the_server():
    class Bare(rebeam.GenServer):
        pass

    pid, ref = rebeam.spawn_monitor(Bare)
    rebeam.send(pid, "raw messages are dropped")
    with pytest.raises(rebeam.Exit):
        rebeam.call(pid, "nobody handles this")
    assert isinstance(wait_down(ref).reason, rebeam.Crash)
    pid, ref = rebeam.spawn_monitor(Bare)
    rebeam.cast(pid, "nobody handles this")
    assert isinstance(wait_down(ref).reason, rebeam.Crash)


def test_idle_timeout_sends_timeout_to_handle_info():
    class Idle(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner
            rebeam.set_timeout(0.05)

        def handle_cast(self, request):
            rebeam.set_timeout(0.05)

        def handle_info(self, message):
            rebeam.send(self.owner, ("info", message))

    start = time.monotonic()
    pid = rebeam.spawn(Idle, rebeam.self_pid())
    assert rebeam.receive(timeout=5) == ("info", rebeam.TIMEOUT)
    assert time.monotonic() - start >= 0.045
    assert nothing(0.1), "the timeout fires once"
    rebeam.cast(pid, "again")
    assert rebeam.receive(timeout=5) == ("info", rebeam.TIMEOUT)


@pytest.mark.parametrize("warmed", [False, True])
@pytest.mark.parametrize("interruption", ["send", "cast", "call"])
def test_any_message_cancels_the_idle_timeout(interruption, warmed):
    class Idle(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner

        def handle_call(self, request, sender):
            if request == "arm":
                rebeam.set_timeout(0.1)
            return request

        def handle_cast(self, request):
            rebeam.send(self.owner, ("cast", request))

        def handle_info(self, message):
            rebeam.send(self.owner, ("info", message))

    pid = rebeam.spawn(Idle, rebeam.self_pid())
    if warmed:
        warm(pid)
    assert rebeam.call(pid, "arm") == "arm"
    # arrives before the timeout, and cancels it
    if interruption == "send":
        rebeam.send(pid, "interrupting")
        assert rebeam.receive(timeout=5) == ("info", "interrupting")
    elif interruption == "cast":
        rebeam.cast(pid, "interrupting")
        assert rebeam.receive(timeout=5) == ("cast", "interrupting")
    else:
        assert rebeam.call(pid, "interrupting") == "interrupting"
    assert nothing(0.25), "no TIMEOUT after another message arrived"


def test_init_failure_raises_init_error_with_cause():
    class Broken(rebeam.GenServer):
        def init(self):
            raise ConnectionError("no database")

    with pytest.raises(rebeam.InitError) as info:
        rebeam.spawn(Broken)
    error = info.value
    assert isinstance(error, rebeam.Error)
    assert isinstance(error.__cause__, ConnectionError)
    assert isinstance(error.reason, rebeam.Crash)
    assert error.reason.type == "ConnectionError"
    assert "no database" in error.reason.traceback
    assert not rebeam.is_alive(error.pid)


def test_init_failure_with_spawn_link_does_not_kill_the_caller():
    class Broken(rebeam.GenServer):
        def init(self):
            raise ConnectionError("no database")

    with pytest.raises(rebeam.InitError):
        rebeam.spawn_link(Broken)
    assert nothing(0.05)
    assert rebeam.process_info(rebeam.self_pid())["links"] == []


def test_init_calling_stop_fails_the_start_with_that_reason():
    class Refuses(rebeam.GenServer):
        def init(self):
            rebeam.stop("ignore_me")

    with pytest.raises(rebeam.InitError) as info:
        rebeam.spawn(Refuses)
    assert info.value.reason == "ignore_me"


def test_genserver_handles_messages_without_holding_a_thread_when_idle():
    # many idle servers must not need many threads
    before = native.stats()["executors"]
    pids = [rebeam.spawn(Recorder, rebeam.self_pid()) for _ in range(300)]
    assert native.stats()["executors"] <= before + 2
    assert sum(rebeam.call(p, "get") for p in pids) == 0


def test_calls_count_as_sent_messages():
    # `rebeam_messages_sent_total` says "send, cast, call": calls run in place and calls
    # queued for an executor count as casts do.
    server = rebeam.spawn(Recorder, rebeam.self_pid())
    expect(("init", 0, 1))
    before = native.stats()
    for _ in range(200):
        rebeam.call(server, "get")  # the first few queued, then run in place (warm)
    after = native.stats()
    assert after["sent"] - before["sent"] >= 200, (before["sent"], after["sent"])
    assert after["delivered"] - before["delivered"] >= 200


def test_spawn_with_unexpected_args_fails_clearly():
    class NoArgs(rebeam.GenServer):
        pass

    with pytest.raises(rebeam.InitError) as info:
        rebeam.spawn(NoArgs, 1, 2)
    assert "init" in str(info.value.__cause__)


def test_terminate_raising_keeps_the_original_reason():
    class BadTerminate(rebeam.GenServer):
        def handle_cast(self, request):
            rebeam.stop(("shutdown", "asked"))

        def terminate(self, reason):
            raise RuntimeError("terminate failed")

    pid, ref = rebeam.spawn_monitor(BadTerminate)
    rebeam.cast(pid, "stop")
    assert wait_down(ref).reason == ("shutdown", "asked")


def test_stop_normal_does_not_affect_links():
    pid = rebeam.spawn_link(Recorder, rebeam.self_pid())
    ref = rebeam.monitor(pid)
    rebeam.call(pid, ("stop", "normal"))
    assert wait_down(ref).reason == "normal"
    assert nothing(0.05, match=lambda m: isinstance(m, rebeam.Exit))


def test_receive_inside_a_handler_keeps_other_messages_for_later():
    class Waits(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner

        def handle_cast(self, request):
            if request == "wait":
                got = rebeam.receive(match=lambda m: m == "wanted", timeout=5)
                rebeam.send(self.owner, ("received", got))

        def handle_info(self, message):
            rebeam.send(self.owner, ("info", message))

    pid = rebeam.spawn(Waits, rebeam.self_pid())
    rebeam.cast(pid, "wait")
    rebeam.send(pid, "first")
    rebeam.send(pid, "wanted")
    rebeam.send(pid, "second")
    assert [rebeam.receive(timeout=5) for _ in range(3)] == [
        ("received", "wanted"), ("info", "first"), ("info", "second")]


def test_init_failure_with_spawn_monitor_leaves_no_down_behind():
    class Broken(rebeam.GenServer):
        def init(self):
            raise ConnectionError("no database")

    with pytest.raises(rebeam.InitError):
        rebeam.spawn_monitor(Broken)
    assert nothing(0.05), "the failure is reported once, by the exception"
