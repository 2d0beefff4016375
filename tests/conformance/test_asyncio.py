"""asyncio actors: GenServers with ``async def`` handlers run on the node's event loop, hold
no thread while they await, still take one message at a time in order, and keep OTP's
exits, links, monitors and supervision (docs/guide.md, "asyncio actors")."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import rebeam
from _util import WAIT, Echo, expect, nothing, wait_down, wait_exit
from rebeam import child


class Sleeper(rebeam.GenServer):
    """Awaits ``asyncio.sleep`` in its handlers and reports to ``owner``."""

    async def init(self, owner: Any, tag: Any = None) -> None:
        await asyncio.sleep(0)
        self.owner, self.tag = owner, tag
        self.seen: list[Any] = []
        self.active = 0
        self.most_active = 0

    async def handle_cast(self, request: Any) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            match request:
                case ("sleep", seconds):
                    await asyncio.sleep(seconds)
                    rebeam.send(self.owner, ("woke", self.tag))
                case ("note", n, seconds):
                    await asyncio.sleep(seconds)
                    self.seen.append(n)
                case ("crash", message):
                    await asyncio.sleep(0.01)
                    raise RuntimeError(message)
                case ("stop", reason):
                    await asyncio.sleep(0.01)
                    rebeam.stop(reason)
        finally:
            self.active -= 1

    async def handle_call(self, request: Any, sender: Any) -> Any:
        match request:
            case "seen":
                return (self.seen, self.most_active)
            case ("sleep", seconds):
                await asyncio.sleep(seconds)
                return ("slept", seconds)
            case ("crash", message):
                await asyncio.sleep(0.01)
                raise ValueError(message)
            case "me":
                await asyncio.sleep(0)
                return rebeam.self_pid()
        return request

    def handle_info(self, message: Any) -> None:
        # A plain handler next to async ones: runs on an executor, as before.
        rebeam.send(self.owner, ("info", message))


def executors() -> int:
    from rebeam._native import native

    return int(native.stats()["executors"])


def test_awaiting_handlers_hold_no_thread_and_do_not_block_other_actors():
    me = rebeam.self_pid()
    n = 100
    pids = [rebeam.spawn(Sleeper, me, i) for i in range(n)]
    echo = rebeam.spawn(Echo)
    threads_before = executors()
    started = time.monotonic()
    for pid in pids:
        rebeam.cast(pid, ("sleep", 0.5))
    # Every sleeper awaits now; another actor still answers at once.
    assert rebeam.call(echo, "ping", timeout=1.0) == "ping"
    assert time.monotonic() - started < 0.4
    woke = {rebeam.receive(match=lambda m: m[0] == "woke", timeout=WAIT)[1] for _ in pids}
    elapsed = time.monotonic() - started
    assert woke == set(range(n))
    # 100 sleeps of 0.5 s overlapped: on threads of their own they would need 100 threads.
    assert elapsed < 2.5, elapsed
    assert executors() <= threads_before + 4


def test_async_handler_replies_to_a_call_and_runs_as_its_process():
    pid = rebeam.spawn(Sleeper, rebeam.self_pid())
    assert rebeam.call(pid, ("sleep", 0.05)) == ("slept", 0.05)
    assert rebeam.call(pid, "me") == pid
    assert rebeam.call(pid, ("echo", 1)) == ("echo", 1)


def test_call_times_out_exactly_while_an_async_handler_awaits():
    pid = rebeam.spawn(Sleeper, rebeam.self_pid())
    started = time.monotonic()
    with pytest.raises(rebeam.Timeout):
        rebeam.call(pid, ("sleep", 1.0), timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 0.5


class Proxy(rebeam.GenServer):
    """Forwards calls to other actors with ``call_async``; reports what it caught."""

    async def handle_call(self, request: Any, sender: Any) -> Any:
        match request:
            case ("forward", target, inner, timeout):
                try:
                    return ("ok", await rebeam.call_async(target, inner, timeout=timeout))
                except rebeam.Timeout as e:
                    return ("timeout", str(e))
                except rebeam.Exit as e:
                    return ("exit", e.reason)
            case ("gather", targets):
                replies = await asyncio.gather(
                    *(rebeam.call_async(t, ("sleep", 0.3)) for t in targets))
                return list(replies)
            case ("blocking", target):
                try:
                    rebeam.call(target, "ping")
                except rebeam.Error as e:
                    return ("refused", str(e))
                return "ran"
            case "blocking_receive":
                try:
                    rebeam.receive(timeout=0)
                except rebeam.Error as e:
                    return ("refused", str(e))
                return "ran"
        return None


class Silent(rebeam.GenServer):
    def handle_call(self, request: Any, sender: Any) -> Any:
        return rebeam.noreply()


def test_async_handler_awaits_calls_to_other_actors():
    proxy = rebeam.spawn(Proxy)
    echo = rebeam.spawn(Echo)
    sleeper = rebeam.spawn(Sleeper, rebeam.self_pid())
    assert rebeam.call(proxy, ("forward", echo, "hi", 5.0)) == ("ok", "hi")
    assert rebeam.call(proxy, ("forward", sleeper, ("sleep", 0.05), 5.0)) == (
        "ok", ("slept", 0.05))
    rebeam.register("async_echo", echo)
    assert rebeam.call(proxy, ("forward", "async_echo", 7, 5.0)) == ("ok", 7)


def test_call_async_fails_like_call():
    proxy = rebeam.spawn(Proxy)
    dead = rebeam.spawn(Echo)
    watch_exit_ref = rebeam.monitor(dead)
    rebeam.exit(dead, "kill")
    wait_down(watch_exit_ref)
    assert rebeam.call(proxy, ("forward", dead, "x", 1.0)) == ("exit", "noproc")
    assert rebeam.call(proxy, ("forward", "nobody_has_this", "x", 1.0)) == ("exit", "noproc")
    echo = rebeam.spawn(Echo)
    _, reason = rebeam.call(proxy, ("forward", echo, ("crash", "bad request"), 1.0))
    assert isinstance(reason, rebeam.Crash) and "bad request" in reason.message
    silent = rebeam.spawn(Silent)
    started = time.monotonic()
    outcome = rebeam.call(proxy, ("forward", silent, "x", 0.2))
    assert outcome[0] == "timeout" and "timed out after 0.2s" in outcome[1]
    assert 0.2 <= time.monotonic() - started < 0.5


def test_a_server_awaiting_in_an_async_handler_shows_as_awaiting_where_it_awaits():
    proxy = rebeam.spawn(Proxy)
    silent = rebeam.spawn(Silent)
    info = rebeam.process_info(proxy)
    assert (info["status"], info["current_function"]) == ("idle", "waiting")
    me = rebeam.self_pid()
    rebeam.spawn(lambda: rebeam.send(me, rebeam.call(proxy, ("forward", silent, "x", 30.0), 30.0)))
    deadline = time.monotonic() + WAIT
    while (info := rebeam.process_info(proxy))["status"] != "awaiting":
        assert time.monotonic() < deadline, info
        time.sleep(0.01)
    # Where the handler awaits (its call_async, shown as the handler's line), not "waiting".
    assert info["current_function"].startswith(f"awaiting {__name__}.Proxy.handle_call:"), info
    rebeam.exit(silent, "kill")
    assert expect(("exit", "killed")) == ("exit", "killed")
    while (info := rebeam.process_info(proxy))["status"] != "idle":
        assert time.monotonic() < deadline, info
        time.sleep(0.01)
    assert info["current_function"] == "waiting"


def test_concurrent_awaits_inside_one_handler():
    proxy = rebeam.spawn(Proxy)
    sleepers = [rebeam.spawn(Sleeper, rebeam.self_pid()) for _ in range(5)]
    started = time.monotonic()
    assert rebeam.call(proxy, ("gather", sleepers)) == [("slept", 0.3)] * 5
    assert time.monotonic() - started < 1.0


def test_blocking_calls_from_a_coroutine_raise_instead_of_stalling_the_loop():
    proxy = rebeam.spawn(Proxy)
    echo = rebeam.spawn(Echo)
    outcome, message = rebeam.call(proxy, ("blocking", echo))
    assert outcome == "refused" and "call_async" in message
    outcome, message = rebeam.call(proxy, "blocking_receive")
    assert outcome == "refused" and "receive_async" in message


class Receiver(rebeam.GenServer):
    """A handler that waits for a message of its own with ``receive_async``."""

    def init(self, owner: Any) -> None:
        self.owner = owner

    async def handle_call(self, request: Any, sender: Any) -> Any:
        kind, timeout = request
        rebeam.send(self.owner, ("waiting", kind))
        started = asyncio.get_running_loop().time()
        got = await rebeam.receive_async(
            match=lambda m: isinstance(m, tuple) and m[0] == kind, timeout=timeout,
            default="nothing")
        return (got, asyncio.get_running_loop().time() - started)

    def handle_info(self, message: Any) -> None:
        rebeam.send(self.owner, ("info", message))


def test_receive_async_times_out_exactly():
    pid = rebeam.spawn(Receiver, rebeam.self_pid())
    got, waited = rebeam.call(pid, ("wanted", 0.3))
    assert got == "nothing"
    assert 0.29 <= waited < 0.6


def test_receive_async_is_selective_and_wakes_on_mail():
    me = rebeam.self_pid()
    pid = rebeam.spawn(Receiver, me)

    def caller() -> None:
        rebeam.send(me, ("answer", rebeam.call(pid, ("wanted", 5.0))))

    rebeam.spawn(caller)
    expect(("waiting", "wanted"))
    # The handler waits now; a message it does not want stays queued, in order.
    rebeam.send(pid, ("other", 1))
    assert nothing(0.2)
    rebeam.send(pid, ("wanted", 2))
    _, (got, waited) = rebeam.receive(match=lambda m: m[0] == "answer", timeout=WAIT)
    assert got == ("wanted", 2) and waited < 2.0
    # The unmatched message goes to handle_info once the handler returned.
    assert expect(("info", ("other", 1))) == ("info", ("other", 1))


async def async_worker(owner: Any) -> None:
    """An async function process: receives without a thread, replies, ends."""
    message = await rebeam.receive_async(timeout=WAIT)
    await asyncio.sleep(0.01)
    rebeam.send(owner, ("worker got", message))


def test_async_function_process():
    pid, ref = rebeam.spawn_monitor(async_worker, rebeam.self_pid())
    rebeam.send(pid, "job")
    assert expect(("worker got", "job")) == ("worker got", "job")
    assert wait_down(ref).reason == "normal"


def test_messages_are_handled_one_at_a_time_in_order():
    pid = rebeam.spawn(Sleeper, rebeam.self_pid())
    for n in range(30):
        # Later messages sleep less: interleaving handlers would finish them first.
        rebeam.cast(pid, ("note", n, (30 - n) * 0.002))
    seen, most_active = rebeam.call(pid, "seen")
    assert seen == list(range(30))
    assert most_active == 1
    # A plain message waits for the awaiting handler too.
    rebeam.cast(pid, ("sleep", 0.2))
    rebeam.send(pid, "after")
    assert expect(("woke", None)) == ("woke", None)
    assert expect(("info", "after")) == ("info", "after")


def test_crash_in_async_handler_exits_with_its_traceback():
    pid = rebeam.spawn(Sleeper, rebeam.self_pid())
    ref = rebeam.monitor(pid)
    with pytest.raises(rebeam.Exit) as caught:
        rebeam.call(pid, ("crash", "async boom"))
    assert isinstance(caught.value, ValueError)
    reason = wait_down(ref).reason
    assert isinstance(reason, rebeam.Crash) and reason.type == "ValueError"
    assert "async boom" in reason.message
    assert "handle_call" in reason.traceback and "test_asyncio.py" in reason.traceback


def test_supervisor_restarts_a_crashed_async_child():
    me = rebeam.self_pid()

    class Sup(rebeam.Supervisor):
        def children(self) -> list[Any]:
            return [child(Sleeper, (me, "child"), id="sleeper", name="async_sleeper")]

    sup = rebeam.spawn_link(Sup)
    first = rebeam.whereis("async_sleeper")
    assert first is not None
    ref = rebeam.monitor(first)
    rebeam.cast(first, ("crash", "async crash"))
    reason = wait_down(ref).reason
    assert isinstance(reason, rebeam.Crash) and "async crash" in reason.message
    assert "handle_cast" in reason.traceback
    deadline = time.monotonic() + WAIT
    while rebeam.whereis("async_sleeper") in (None, first) and time.monotonic() < deadline:
        rebeam.receive(timeout=0.01, default=None)
    second = rebeam.whereis("async_sleeper")
    assert second not in (None, first)
    assert rebeam.call(second, ("sleep", 0.01)) == ("slept", 0.01)
    rebeam.unlink(sup)
    rebeam.exit(sup, "shutdown")


class Cancellable(rebeam.GenServer):
    """Awaits for a long time; records how the wait ended in ``log`` (a shared list)."""

    def init(self, log: list[str], done: threading.Event, trap: bool = False) -> None:
        self.log, self.done = log, done
        if trap:
            rebeam.trap_exits(True)

    async def handle_cast(self, request: Any) -> None:
        self.log.append("awaiting")
        try:
            await asyncio.sleep(60)
            self.log.append("slept")
        except asyncio.CancelledError:
            self.log.append("cancelled")
            raise
        finally:
            self.done.set()

    async def terminate(self, reason: Any) -> None:
        await asyncio.sleep(0.01)
        self.log.append(f"terminate {reason}")
        self.done.set()


def no_tasks_left() -> bool:
    """True once no task runs on the node's event loop (waits for one being cancelled)."""
    from rebeam import _aio

    deadline = time.monotonic() + WAIT
    while (_aio._tasks or _aio._futures) and time.monotonic() < deadline:
        rebeam.receive(timeout=0.01, default=None)
    return not _aio._tasks and not _aio._futures


def test_killing_an_actor_cancels_its_pending_await():
    log: list[str] = []
    done = threading.Event()
    pid = rebeam.spawn(Cancellable, log, done)
    rebeam.cast(pid, "wait")
    deadline = time.monotonic() + WAIT
    while "awaiting" not in log and time.monotonic() < deadline:
        rebeam.receive(timeout=0.01, default=None)
    started = time.monotonic()
    ref = rebeam.monitor(pid)
    rebeam.exit(pid, "kill")
    assert wait_down(ref).reason == "killed"
    assert done.wait(WAIT)
    assert time.monotonic() - started < 1.0
    assert log == ["awaiting", "cancelled"]
    assert not rebeam.is_alive(pid)
    assert no_tasks_left()


def test_a_linked_crash_cancels_and_a_call_in_flight_fails():
    log: list[str] = []
    done = threading.Event()
    pid = rebeam.spawn(Cancellable, log, done)
    sleeper = rebeam.spawn(Sleeper, rebeam.self_pid())

    def caller() -> None:
        try:
            rebeam.call(sleeper, ("sleep", 30), timeout=10)
        except rebeam.Exit as e:
            rebeam.send(me, ("caller saw", e.reason))

    me = rebeam.self_pid()
    rebeam.spawn(caller)
    rebeam.cast(pid, "wait")
    ref = rebeam.monitor(sleeper)
    assert nothing(0.1)
    rebeam.exit(sleeper, "stopped by test")
    assert wait_down(ref).reason == "stopped by test"
    assert expect(("caller saw", "stopped by test")) == ("caller saw", "stopped by test")


def test_stop_from_async_handler_runs_async_terminate():
    log: list[str] = []
    done = threading.Event()

    class Stopper(Cancellable):
        async def handle_cast(self, request: Any) -> None:
            await asyncio.sleep(0.01)
            rebeam.stop(request)

    pid = rebeam.spawn(Stopper, log, done)
    ref = rebeam.monitor(pid)
    threads = threading.active_count()
    rebeam.cast(pid, "done here")
    assert wait_down(ref).reason == "done here"
    assert log == ["terminate done here"]
    # Nothing of it stays behind: no task on the loop, no thread.
    assert no_tasks_left()
    assert threading.active_count() == threads


def test_supervisor_shutdown_runs_async_terminate_of_a_trapping_child():
    log: list[str] = []
    done = threading.Event()

    class Sup(rebeam.Supervisor):
        def children(self) -> list[Any]:
            return [child(Cancellable, (log, done, True), id="c", shutdown=5.0)]

    rebeam.trap_exits(True)
    sup = rebeam.spawn_link(Sup)
    rebeam.exit(sup, "shutdown")
    assert wait_exit(sup).reason == "shutdown"
    assert log == ["terminate shutdown"]


def test_terminate_child_kills_an_async_child_that_awaits_past_its_shutdown_time():
    log: list[str] = []
    done = threading.Event()

    class Stubborn(Cancellable):
        async def terminate(self, reason: Any) -> None:
            log.append("terminating")
            await asyncio.sleep(60)

    class Sup(rebeam.Supervisor):
        def children(self) -> list[Any]:
            return [child(Stubborn, (log, done, True), id="c", shutdown=0.2)]

    sup = rebeam.spawn(Sup)
    (_, pid, _), = rebeam.which_children(sup)
    ref = rebeam.monitor(pid)
    started = time.monotonic()
    assert rebeam.terminate_child(sup, "c") is True
    assert wait_down(ref).reason == "killed"
    assert 0.19 <= time.monotonic() - started < 3.0
    assert log == ["terminating"]


class FailingInit(rebeam.GenServer):
    async def init(self) -> None:
        await asyncio.sleep(0.01)
        raise KeyError("no config")


def test_async_init_runs_before_spawn_returns_and_its_crash_fails_the_start():
    pid = rebeam.spawn(Sleeper, rebeam.self_pid(), "t")
    # init awaited before spawn returned: the state it set is there.
    assert rebeam.call(pid, "seen") == ([], 0)
    with pytest.raises(rebeam.InitError) as caught:
        rebeam.spawn(FailingInit)
    assert "no config" in str(caught.value.reason)


async def test_an_async_body_given_to_run_is_a_process_on_the_loop():
    # This test body is itself `async def`: rebeam.run runs it on the node's event loop.
    me = rebeam.self_pid()
    echo = rebeam.spawn(Echo)
    assert await rebeam.call_async(echo, "hi") == "hi"
    rebeam.send(me, "note")
    assert await rebeam.receive_async(timeout=1.0) == "note"
    assert await rebeam.receive_async(timeout=0.05, default="none") == "none"
    with pytest.raises(rebeam.Timeout):
        await rebeam.receive_async(timeout=0.05)
    with pytest.raises(rebeam.Error, match="call_async"):
        rebeam.call(echo, "blocking")
    with pytest.raises(rebeam.Error, match="async"):
        rebeam.spawn(Sleeper, me)


class SlowInit(rebeam.GenServer):
    """An async ``init`` that awaits ``seconds`` and records that it ran."""

    async def init(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.ready = True

    def handle_call(self, request: Any, sender: Any) -> Any:
        return ("ready", self.ready)


async def test_spawn_async_awaits_an_async_init_without_blocking_the_loop():
    started = time.monotonic()
    # Five inits of 0.3 s side by side: the loop is free while each awaits.
    pids = await asyncio.gather(*(rebeam.spawn_async(SlowInit, 0.3) for _ in range(5)))
    assert time.monotonic() - started < 1.0
    for pid in pids:
        assert await rebeam.call_async(pid, "?") == ("ready", True)
    linked = await rebeam.spawn_async(SlowInit, 0.01, link=True)
    assert linked in rebeam.process_info(rebeam.self_pid())["links"]
    pid, ref = await rebeam.spawn_async(SlowInit, 0.01, monitor=True)
    rebeam.exit(pid, "kill")
    down = await rebeam.receive_async(lambda m: isinstance(m, rebeam.Down) and m.ref == ref, 5.0)
    assert down.reason == "killed"
    with pytest.raises(rebeam.InitError) as caught:
        await rebeam.spawn_async(FailingInit)
    assert "no config" in str(caught.value.reason)
    assert isinstance(caught.value.__cause__, KeyError)
    # A plain init runs at once, a function process starts as with spawn.
    echo = await rebeam.spawn_async(Echo)
    assert await rebeam.call_async(echo, "hi") == "hi"
    worker = await rebeam.spawn_async(async_worker, rebeam.self_pid())
    rebeam.send(worker, "job")
    assert await rebeam.receive_async(lambda m: m == ("worker got", "job"), 5.0)
    # The blocking form keeps refusing on the loop, naming the awaitable one.
    with pytest.raises(rebeam.Error, match="spawn_async"):
        rebeam.spawn(SlowInit, 0.01)


async def test_start_child_async_and_a_pool_for_async_code():
    sup = rebeam.spawn(rebeam.DynamicSupervisor)
    pid = await rebeam.start_child_async(sup, child(SlowInit, (0.05,)))
    assert await rebeam.call_async(pid, "?") == ("ready", True)
    with pytest.raises(rebeam.InitError):
        await rebeam.start_child_async(sup, child(FailingInit))
    with pytest.raises(rebeam.Error, match="call_async"):
        rebeam.start_child(sup, child(Echo))
    with await rebeam.Pool.start_async(Sleeper, rebeam.self_pid(), size=3) as pool:
        assert len(pool) == 3
        assert await pool.call_async(("sleep", 0.01)) == ("slept", 0.01)
        started = time.monotonic()
        replies = await pool.map_async([("sleep", 0.2)] * 6)
        assert replies == [("slept", 0.2)] * 6
        assert time.monotonic() - started < 0.9, "three servers at once"
    with pytest.raises(rebeam.Error, match="spawn_on"):
        rebeam.Pool(Echo, size=1, nodes=["elsewhere"])


def test_call_async_outside_the_loop_says_where_it_belongs():
    with pytest.raises(rebeam.Error, match="event loop"):
        asyncio.run(rebeam.call_async(rebeam.self_pid(), "x"))


UPGRADED = """
    import asyncio

    import rebeam


    class Fetcher(rebeam.GenServer):
        async def handle_call(self, request, sender):
            await asyncio.sleep(0)
            return ({n}, request)

        {code_change}def code_change(self, version, extra):
            self.moved = (version, extra)
"""


def fetcher_version(tmp_path: Path, app: str, n: int, async_change: bool) -> Any:
    from rebeam import _code

    d = tmp_path / f"{app}-{n}"
    d.mkdir()
    code_change = "async " if async_change else ""
    (d / "fetcher.py").write_text(textwrap.dedent(UPGRADED.format(n=n, code_change=code_change)))
    return _code.load(app, f"{n}.0", str(n) * 64, str(d), ["fetcher"])


def test_hot_upgrade_moves_an_async_server_and_refuses_an_async_code_change(tmp_path: Path):
    from rebeam import _code

    app = "async_upgrade"
    v1 = fetcher_version(tmp_path, app, 1, False)
    v2 = fetcher_version(tmp_path, app, 2, False)
    v3 = fetcher_version(tmp_path, app, 3, True)
    _code.make_current(v1)
    server = v1.module("fetcher").Fetcher()
    _code.make_current(v2)
    assert _code.move_server(server, app) is True
    assert type(server) is v2.module("fetcher").Fetcher and server.moved == ("1.0", None)
    # An async code_change could not finish between two messages: refused, nothing moved.
    _code.make_current(v3)
    with pytest.raises(TypeError, match="code_change is async"):
        _code.move_server(server, app)
    assert type(server) is v2.module("fetcher").Fetcher
