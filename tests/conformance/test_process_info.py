"""process_info: what `rebeam ps` shows of a process, read inside the node."""

from __future__ import annotations

import threading
import time

import rebeam
from _util import WAIT, expect


def until(what: str, check) -> dict:
    """Polls ``process_info`` through ``check`` until it holds (or fails after WAIT)."""
    deadline = time.monotonic() + WAIT
    while True:
        info = check()
        if info:
            return info
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Holder(rebeam.GenServer):
    def init(self):
        self.blob = "x" * 100_000

    def handle_call(self, request, sender):
        return len(self.blob)


class Top(rebeam.Supervisor):
    def children(self):
        return [rebeam.child(Holder, name="held-by-top")]


def test_a_server_reports_its_class_parent_state_size_and_handled_messages():
    pid = rebeam.spawn(Holder)
    info = rebeam.process_info(pid)
    assert info["kind"] == "server"
    assert info["initial"] == f"{__name__}.Holder"
    assert info["parent"] == rebeam.self_pid()
    assert info["current_function"] == "waiting"
    assert info["memory"] >= 100_000, "the state's values count"
    assert info["handled"] == 0
    for _ in range(3):
        rebeam.call(pid, "size")
    assert rebeam.process_info(pid)["handled"] == 3


def test_a_supervisor_reports_as_one_and_is_its_children_s_parent():
    top = rebeam.spawn(Top)
    info = rebeam.process_info(top)
    assert (info["kind"], info["initial"], info["trap_exit"]) == ("supervisor", f"{__name__}.Top", True)
    child = rebeam.whereis("held-by-top")
    assert rebeam.process_info(child)["parent"] == top
    assert child in info["links"]
    rebeam.exit(top, "shutdown")


def test_a_running_function_shows_where_it_runs():
    info = rebeam.process_info(rebeam.self_pid())
    assert info["kind"] == "function"
    name = "test_a_running_function_shows_where_it_runs"
    assert info["initial"] == f"{__name__}.{name}"
    assert info["current_function"].startswith(f"{__name__}.{name}:"), info["current_function"]


def test_function_processes_count_the_messages_they_receive():
    me = rebeam.self_pid()

    def worker():
        while True:
            rebeam.send(me, ("got", rebeam.receive()))

    pid = rebeam.spawn(worker)
    for i in range(3):
        rebeam.send(pid, i)
        expect(("got", i))
    assert rebeam.process_info(pid)["handled"] == 3


def test_messages_a_selective_receive_looks_through_still_count_as_queued():
    def picky():
        rebeam.receive(lambda m: m == "go")
        rebeam.receive(lambda m: m == "never")

    pid = rebeam.spawn(picky)
    for i in range(5):
        rebeam.send(pid, i)
    # The receive takes the messages out of the mailbox to match them, and waits holding
    # them; a blocked receive shows its caller, not rebeam's wrapper.
    def waiting_with_five() -> dict | None:
        info = rebeam.process_info(pid)
        return info if info["mailbox"] == 5 and ".picky:" in info["current_function"] else None

    until("picky to wait with 5 queued messages", waiting_with_five)
    rebeam.send(pid, "go")
    until("the match to be taken", lambda: rebeam.process_info(pid)["handled"] == 1)
    assert rebeam.process_info(pid)["mailbox"] == 5


RELEASE = threading.Event()


class Gate(rebeam.GenServer):
    """Holds its thread on ``"hold"`` until ``RELEASE`` is set; counts what it handles."""

    def init(self):
        self.n = 0

    def handle_cast(self, request):
        self.n += 1
        while request == "hold" and not RELEASE.wait(0.01):
            pass

    def handle_call(self, request, sender):
        return self.n


def test_a_server_gives_back_the_room_of_a_burst_of_mail_when_it_goes_idle():
    RELEASE.clear()
    pid = rebeam.spawn(Gate)
    rebeam.cast(pid, "hold")
    for _ in range(50_000):
        rebeam.cast(pid, 1)
    full = rebeam.process_info(pid)
    assert full["mailbox"] >= 49_000
    RELEASE.set()
    assert rebeam.call(pid, "count", timeout=60) == 50_001
    idle = until("the server idle", lambda: (i := rebeam.process_info(pid))
                 and i["mailbox"] == 0 and i["current_function"] == "waiting" and i)
    # The burst's room (over 50,000 envelopes) would be megabytes; an idle server keeps
    # room for a few thousand.
    assert idle["memory"] < 1_000_000, (full["memory"], idle["memory"])
    assert full["memory"] > 2_000_000, full["memory"]
