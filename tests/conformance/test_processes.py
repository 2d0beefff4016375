"""Processes: pids, spawn, send, selective receive, call and cast (docs/semantics.md, "The model")."""

from __future__ import annotations

import inspect
import pickle
import time

import pytest

import rebeam
from _util import Echo, expect, forever, nothing, wait_down, warm


def test_pids_are_values_unique_and_printable():
    pids = [rebeam.spawn(lambda: None) for _ in range(50)]
    assert len(set(pids)) == 50, "a pid is never reused"
    me = rebeam.self_pid()
    text = repr(me)
    assert text.startswith("<") and text.endswith(">")
    assert repr(me).count(".") == 2, text
    assert me.node in text
    assert pickle.loads(pickle.dumps(me)) == me
    assert hash(pickle.loads(pickle.dumps(me))) == hash(me)


def test_spawn_runs_function_with_args():
    me = rebeam.self_pid()
    pid = rebeam.spawn(lambda a, b=0: rebeam.send(me, ("sum", a + b)), 2, b=3)
    assert isinstance(pid, rebeam.Pid)
    assert rebeam.receive(timeout=5) == ("sum", 5)


def test_pid_travels_in_messages():
    me = rebeam.self_pid()

    def child():
        rebeam.send(me, ("my pid", rebeam.self_pid()))
        request, sender = rebeam.receive(timeout=5)
        rebeam.send(sender, ("answer", request))

    pid = rebeam.spawn(child)
    assert rebeam.receive(timeout=5) == ("my pid", pid)
    rebeam.send(pid, ([1, 2], me))
    assert rebeam.receive(timeout=5) == ("answer", [1, 2])


def test_function_result_is_normal_exit_and_exception_is_crash():
    _, ref = rebeam.spawn_monitor(lambda: 42)
    assert wait_down(ref).reason == "normal"

    def boom():
        raise ValueError("bad value 7")

    pid, ref = rebeam.spawn_monitor(boom)
    down = wait_down(ref)
    assert down.pid == pid
    assert isinstance(down.reason, rebeam.Crash)
    assert down.reason.type == "ValueError"
    assert down.reason.message == "bad value 7"
    assert "Traceback" in down.reason.traceback and "boom" in down.reason.traceback


def test_exit_reasons_are_preserved():
    for reason in ["shutdown", ("shutdown", {"why": "upgrade"}), "custom", ("error", 1, [2])]:
        pid, ref = rebeam.spawn_monitor(forever)
        rebeam.exit(pid, reason)
        assert wait_down(ref).reason == reason


def test_stop_in_a_function_process_sets_its_reason():
    def quit_with_reason():
        rebeam.stop(("shutdown", "done"))

    _, ref = rebeam.spawn_monitor(quit_with_reason)
    assert wait_down(ref).reason == ("shutdown", "done")


def test_send_never_fails_to_a_dead_process():
    pid, ref = rebeam.spawn_monitor(lambda: None)
    wait_down(ref)
    assert not rebeam.is_alive(pid)
    assert rebeam.send(pid, "into the void") is None  # type: ignore[func-returns-value]
    rebeam.cast(pid, "into the void")


def test_send_does_not_block_on_a_busy_receiver():
    pid = rebeam.spawn(lambda: time.sleep(30))
    start = time.monotonic()
    for i in range(10_000):
        rebeam.send(pid, i)
    assert time.monotonic() - start < 2.0
    assert rebeam.process_info(pid)["mailbox"] == 10_000


def test_messages_between_a_pair_arrive_in_order():
    me = rebeam.self_pid()

    def sender():
        for i in range(2000):
            rebeam.send(me, ("n", i))

    rebeam.spawn(sender)
    got = [rebeam.receive(timeout=5)[1] for _ in range(2000)]
    assert got == list(range(2000))


def test_selective_receive_keeps_other_messages_in_order():
    me = rebeam.self_pid()
    for message in ["a", 1, "b", 2, "c", 3]:
        rebeam.send(me, message)
    assert rebeam.receive(match=lambda m: isinstance(m, int), timeout=1) == 1
    assert rebeam.receive(match=lambda m: m == 3, timeout=1) == 3
    assert [rebeam.receive(timeout=1) for _ in range(4)] == ["a", "b", 2, "c"]


def test_selective_receive_waits_for_a_later_match():
    me = rebeam.self_pid()

    def late():
        rebeam.send(me, "noise")
        rebeam.send(me, "wanted")

    rebeam.spawn(late)
    assert rebeam.receive(match=lambda m: m == "wanted", timeout=5) == "wanted"
    assert rebeam.receive(timeout=1) == "noise"


def test_receive_timeout_raises_or_returns_default():
    start = time.monotonic()
    with pytest.raises(rebeam.Timeout):
        rebeam.receive(timeout=0.05)
    assert rebeam.receive(timeout=0.05, default="none") == "none"
    assert rebeam.receive(timeout=0, default="none") == "none"
    assert time.monotonic() - start < 2.0
    assert issubclass(rebeam.Timeout, rebeam.Error)


def test_call_and_cast():
    me = rebeam.self_pid()
    pid = rebeam.spawn(Echo, me)
    assert rebeam.call(pid, ("hello", [1])) == ("hello", [1])
    rebeam.cast(pid, "fire")
    assert expect(("cast", "fire")) == ("cast", "fire")
    rebeam.send(pid, "raw")
    assert expect(("info", "raw"))


def test_call_default_timeout_is_five_seconds():
    assert inspect.signature(rebeam.call).parameters["timeout"].default == 5.0


def test_call_timeout_raises_timeout():
    class Slow(rebeam.GenServer):
        def handle_call(self, request, sender):
            return rebeam.noreply()

    pid = rebeam.spawn(Slow)
    start = time.monotonic()
    with pytest.raises(rebeam.Timeout):
        rebeam.call(pid, "anything", timeout=0.1)
    assert 0.09 <= time.monotonic() - start < 2.0
    assert rebeam.is_alive(pid), "a caller's timeout does not hurt the server"


def test_call_to_dead_pid_raises_exit_noproc():
    pid, ref = rebeam.spawn_monitor(Echo)
    rebeam.exit(pid, "kill")
    wait_down(ref)
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(pid, "ping", timeout=1)
    assert info.value.reason == "noproc"
    assert info.value.pid == pid
    assert isinstance(info.value, rebeam.Error)


def test_call_to_self_raises_at_once():
    start = time.monotonic()
    with pytest.raises(rebeam.Error):
        rebeam.call(rebeam.self_pid(), "ping", timeout=3)
    assert time.monotonic() - start < 1.0


def test_call_to_self_from_a_genserver_raises():
    class SelfCaller(rebeam.GenServer):
        def handle_call(self, request, sender):
            try:
                rebeam.call(rebeam.self_pid(), "again", timeout=3)
            except rebeam.Error as e:
                return type(e).__name__
            return "no error"

    pid = rebeam.spawn(SelfCaller)
    start = time.monotonic()
    assert rebeam.call(pid, "go") in ("Error", "Exit")
    assert time.monotonic() - start < 1.0


def test_target_dying_mid_call_raises_exit_with_its_reason():
    class Dies(rebeam.GenServer):
        def handle_call(self, request, sender):
            raise KeyError("lost")

    pid = rebeam.spawn(Dies)
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(pid, "go", timeout=5)
    assert info.value.pid == pid
    assert isinstance(info.value.reason, rebeam.Crash)
    assert info.value.reason.type == "KeyError"


def test_target_killed_while_holding_a_call_raises_exit_killed():
    class Holds(rebeam.GenServer):
        def handle_call(self, request, sender):
            return rebeam.noreply()

    pid = rebeam.spawn(Holds)
    me = rebeam.self_pid()

    def killer():
        rebeam.receive(timeout=5)  # wait for the go
        rebeam.exit(pid, "kill")

    k = rebeam.spawn(killer)
    rebeam.send_after(0.05, k, "go")
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(pid, "hold", timeout=5)
    assert info.value.reason == "killed"
    assert me == rebeam.self_pid()


def test_deferred_reply_with_noreply_and_reply():
    class Deferred(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner
            self.waiting = []

        def handle_call(self, request, sender):
            if request == "wait":
                self.waiting.append(sender)
                rebeam.send(self.owner, ("parked", sender.pid))
                return rebeam.noreply()
            for s in self.waiting:
                rebeam.reply(s, ("released", s.pid))
            n, self.waiting = len(self.waiting), []
            return n

    me = rebeam.self_pid()
    server = rebeam.spawn(Deferred, me)

    def waiter():
        rebeam.send(me, ("got", rebeam.call(server, "wait", timeout=5)))

    w1 = rebeam.spawn(waiter)
    w2 = rebeam.spawn(waiter)
    parked = {rebeam.receive(match=lambda m: m[0] == "parked", timeout=5)[1] for _ in range(2)}
    assert parked == {w1, w2}
    assert nothing(0.05, match=lambda m: m[0] == "got"), "no reply before reply() is called"
    assert rebeam.call(server, "release") == 2
    got = {rebeam.receive(match=lambda m: m[0] == "got", timeout=5)[1] for _ in range(2)}
    assert got == {("released", w1), ("released", w2)}


def test_reply_from_another_process():
    class Delegates(rebeam.GenServer):
        def handle_call(self, request, sender):
            rebeam.spawn(lambda: rebeam.reply(sender, request * 2))
            return rebeam.noreply()

    pid = rebeam.spawn(Delegates)
    assert rebeam.call(pid, 21) == 42


def test_deferred_call_fails_when_server_dies_before_replying():
    class Parks(rebeam.GenServer):
        def init(self, owner):
            self.owner = owner

        def handle_call(self, request, sender):
            if request == "park":
                rebeam.send(self.owner, "parked")
                return rebeam.noreply()
            rebeam.stop("custom_reason")
            return "ok"

    me = rebeam.self_pid()
    pid = rebeam.spawn(Parks, me)

    def parked():
        try:
            rebeam.call(pid, "park", timeout=5)
        except rebeam.Exit as e:
            rebeam.send(me, ("exit", e.reason))

    rebeam.spawn(parked)
    expect("parked")
    assert rebeam.call(pid, "stop") == "ok"
    assert rebeam.receive(timeout=5) == ("exit", "custom_reason")


def test_spawn_monitor_and_processes_listing():
    pid, ref = rebeam.spawn_monitor(forever)
    assert pid in rebeam.processes()
    assert rebeam.is_alive(pid)
    assert isinstance(ref, rebeam.Ref)
    rebeam.exit(pid, "kill")
    assert wait_down(ref).reason == "killed"
    assert pid not in rebeam.processes()


def test_spawning_a_non_genserver_class_is_refused():
    class Plain:
        pass

    with pytest.raises(TypeError, match="GenServer"):
        rebeam.spawn(Plain)


def test_api_outside_a_process_raises():
    # this test runs inside a process; a thread outside any process cannot receive
    import threading

    errors = []

    def outside():
        try:
            rebeam.receive(timeout=0)
        except rebeam.Error as e:
            errors.append(e)

    t = threading.Thread(target=outside)
    t.start()
    t.join()
    assert errors and "process" in str(errors[0])


@pytest.mark.parametrize("warmed", [False, True])
def test_call_outcomes_are_the_same_on_the_fast_path(warmed):
    class Server(rebeam.GenServer):
        def init(self):
            self.log = []

        def handle_cast(self, request):
            self.log.append(("cast", request))

        def handle_info(self, message):
            self.log.append(("info", message))

        def handle_call(self, request, sender):
            match request:
                case "ping":
                    return "pong"
                case "log":
                    return self.log
                case "self":
                    try:
                        rebeam.call(rebeam.self_pid(), "x", timeout=1)
                    except rebeam.Error as e:
                        return type(e).__name__
                case ("raise", text):
                    raise ArithmeticError(text)
                case ("stop", reason):
                    rebeam.stop(reason)
                    return "stopping"
            return request

    pid = rebeam.spawn(Server)
    if warmed:
        warm(pid)
    for i in range(100):
        rebeam.cast(pid, i)
        rebeam.send(pid, -i)
    log = rebeam.call(pid, "log")
    assert log == [entry for i in range(100) for entry in (("cast", i), ("info", -i))], (
        "casts, sends and the call from one sender are handled in the order sent")
    assert rebeam.call(pid, "self") == "Error"
    request = {"mutable": [1]}
    reply = rebeam.call(pid, request)
    assert reply == request and reply is not request
    with pytest.raises(rebeam.Exit) as info:
        rebeam.call(pid, ("raise", "bad math"))
    assert info.value.reason.type == "ArithmeticError"
    assert not rebeam.is_alive(pid)

    pid, ref = rebeam.spawn_monitor(Server)
    if warmed:
        warm(pid)
    assert rebeam.call(pid, ("stop", ("shutdown", 1))) == "stopping"
    assert wait_down(ref).reason == ("shutdown", 1)


def test_call_with_no_timeout_waits():
    class Later(rebeam.GenServer):
        def handle_call(self, request, sender):
            rebeam.spawn(lambda: (rebeam.receive(timeout=0.1, default=None),
                                  rebeam.reply(sender, "late")))
            return rebeam.noreply()

    assert rebeam.call(rebeam.spawn(Later), "x", timeout=None) == "late"


def test_a_process_killed_while_blocked_in_call_dies_at_once():
    class Never(rebeam.GenServer):
        def handle_call(self, request, sender):
            return rebeam.noreply()

    server = rebeam.spawn(Never)
    me = rebeam.self_pid()

    def caller():
        rebeam.send(me, "calling")
        rebeam.call(server, "hang", timeout=None)

    pid, ref = rebeam.spawn_monitor(caller)
    expect("calling")
    start = time.monotonic()
    rebeam.exit(pid, "kill")
    assert wait_down(ref, timeout=2).reason == "killed"
    assert time.monotonic() - start < 1.0


def test_call_from_a_thread_outside_any_process():
    import threading

    pid = rebeam.spawn(Echo)
    out = []
    t = threading.Thread(target=lambda: out.append(rebeam.call(pid, ("outside", 1))))
    t.start()
    t.join(5)
    assert out == [("outside", 1)]


def test_pid_prints_node_incarnation_and_serial():
    import re

    me = rebeam.self_pid()
    assert re.fullmatch(r"<[\w-]+\.[0-9a-f]{4}\.\d+>", repr(me)), repr(me)
    assert repr(me) == f"<{me.node}.{me.incarnation & 0xFFFF:04x}.{me.serial}>"
    other = rebeam.spawn(lambda: None)
    assert (other.node, other.incarnation) == (me.node, me.incarnation)
    assert other.serial > me.serial, "serials only grow: a pid is never reused"


def test_every_exception_derives_from_error():
    for cls in (rebeam.Timeout, rebeam.Exit, rebeam.InitError, rebeam.NameTaken,
                rebeam.UnknownName, rebeam.NotInNode, rebeam.TableError):
        assert issubclass(cls, rebeam.Error), cls
    assert issubclass(rebeam.Timeout, TimeoutError)


def test_cast_to_an_unknown_name_is_silently_dropped():
    assert rebeam.cast(f"nobody-{rebeam.self_pid().serial}", "x") is None  # type: ignore[func-returns-value]


def test_stop_without_reason_is_normal():
    class Quits(rebeam.GenServer):
        def handle_cast(self, request):
            rebeam.stop()

    pid, ref = rebeam.spawn_monitor(Quits)
    rebeam.cast(pid, "quit")
    assert wait_down(ref).reason == "normal"


def test_a_raising_match_function_leaves_the_mailbox_intact():
    me = rebeam.self_pid()
    for m in ["a", "b"]:
        rebeam.send(me, m)

    def bad_match(message):
        raise ValueError("bad matcher")

    with pytest.raises(ValueError):
        rebeam.receive(match=bad_match, timeout=1)
    assert [rebeam.receive(timeout=1) for _ in range(2)] == ["a", "b"]


def test_reply_then_return_answers_once():
    class Both(rebeam.GenServer):
        def handle_call(self, request, sender):
            rebeam.reply(sender, "first")
            return "second"

    pid = rebeam.spawn(Both)
    assert rebeam.call(pid, "x") == "first"
    assert nothing(0.05)
    assert rebeam.call(pid, "x") == "first"


def test_nodes_lists_the_alive_nodes_with_this_one():
    assert rebeam.self_pid().node in rebeam.nodes()
