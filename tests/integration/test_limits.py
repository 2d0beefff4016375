"""Limits that keep one app's abuse from taking its node down: per-process mailbox limits
(killed with ``mailbox_limit``, the supervisor decides) on a real node, with an innocent
app beside the offender."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rebeam
from harness import DevNode, wait_for

FLOOD_MANIFEST = """
[app]
name = "flood"
version = "1"
max_restarts = 1000
max_seconds = 1

[[children]]
start = "floodmod:Slow"
name = "slow"
global = true

[[children]]
start = "floodmod:Slow"
name = "tiny"
max_mailbox = 5

[[children]]
start = "floodmod:Driver"
name = "driver"
global = true
"""

FLOOD_CODE = """
import time

import rebeam
from rebeam import Down, Global


class Slow(rebeam.GenServer):
    def handle_cast(self, request):
        time.sleep(0.05)


class Driver(rebeam.GenServer):
    def handle_call(self, request, sender):
        match request:
            case ("flood", n, size):
                for i in range(n):
                    # A fresh object each time: every message really holds `size` bytes.
                    rebeam.cast(Global("slow"), bytes([i % 256]) * size)
                return "sent"
            case ("tiny", n):
                def watch():
                    pid = rebeam.whereis("tiny")
                    ref = rebeam.monitor(pid)
                    for i in range(n):
                        rebeam.cast(pid, i)
                    down = rebeam.receive(
                        lambda m: isinstance(m, Down) and m.ref == ref, timeout=30)
                    rebeam.reply(sender, down.reason)
                rebeam.spawn(watch)
                return rebeam.noreply()
"""

GOOD_MANIFEST = """
[app]
name = "good"
version = "1"
max_restarts = 0

[[children]]
start = "goodmod:Counter"
name = "counter"
global = true
"""

GOOD_CODE = """
import rebeam


class Counter(rebeam.GenServer):
    def init(self):
        self.n = 0

    def handle_call(self, request, sender):
        self.n += 1
        return self.n
"""


def write(root: Path, name: str, manifest: str, module: str, code: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "rebeam.toml").write_text(manifest)
    (d / f"{module}.py").write_text(code)
    return d


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevNode]:
    node = DevNode("dev", tmp_path / "dev", "")
    try:
        yield node.start()
    finally:
        node.stop()


def test_a_flood_to_a_slow_server_is_bounded_and_the_innocent_app_keeps_working(
        dev: DevNode, tmp_path: Path) -> None:
    """2000 casts of 1 MiB to a server that handles 20 a second used to queue ~2 GB in its
    mailbox until the kernel killed the node. With the default limit (256 MiB per mailbox)
    the server is killed with ``mailbox_limit`` and restarted; the node's memory stays
    bounded and the innocent app on the same node answers throughout."""
    flood = write(tmp_path, "flood", FLOOD_MANIFEST, "floodmod", FLOOD_CODE)
    good = write(tmp_path, "good", GOOD_MANIFEST, "goodmod", GOOD_CODE)
    assert dev.process is not None
    with dev.client() as client:
        client.submit(good, wait=60)
        client.submit(flood, wait=60)
        baseline = rss(dev.process.pid)
        peak = baseline
        done = threading.Event()
        answers: list[int] = []
        errors: list[BaseException] = []

        def watch() -> None:
            nonlocal peak
            with dev.client() as other:
                while not done.is_set():
                    peak = max(peak, rss(dev.process.pid))  # type: ignore[union-attr]
                    try:
                        answers.append(other.call("counter", "tick", timeout=10))
                    except BaseException as e:  # noqa: BLE001 - reported below
                        errors.append(e)
                        return
                    time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            assert client.call("driver", ("flood", 2000, 1 << 20), timeout=300) == "sent"
        finally:
            done.set()
            watcher.join()
        assert dev.process.poll() is None, dev.output()[-3000:]
        assert not errors, errors
        assert len(answers) >= 5 and answers == sorted(answers), answers[:20]
        grown = peak - baseline
        assert grown < 900 << 20, f"the node grew by {grown >> 20} MiB during the flood"
        assert "mailbox_limit" in dev.output()
        assert client.call("counter", "tick", timeout=10) == answers[-1] + 1
        assert client.app("good").status == "running"


def test_a_child_spec_limit_from_the_manifest_kills_with_mailbox_limit(
        dev: DevNode, tmp_path: Path) -> None:
    """``max_mailbox = 5`` in the manifest: the sixth queued message kills the child with
    reason ``mailbox_limit`` (as a monitor sees it), and the child is restarted."""
    flood = write(tmp_path, "flood", FLOOD_MANIFEST, "floodmod", FLOOD_CODE)
    with dev.client() as client:
        client.submit(flood, wait=60)
        assert client.call("driver", ("tiny", 50), timeout=60) == "mailbox_limit"

        def tiny_back() -> bool:
            return any(p.child == "tiny" for p in client.processes("flood"))

        wait_for("the tiny child to be restarted", tiny_back, timeout=30)


HOG_MANIFEST = """
[app]
name = "hog"
version = "1"
max_restarts = 1000
max_seconds = 1

[[children]]
start = "floodmod:Slow"
name = "slow"
global = true
max_mailbox = 0
max_mailbox_bytes = 0

[[children]]
start = "floodmod:Driver"
name = "driver"
global = true
"""


def test_the_memory_guard_ends_the_hogging_app_before_the_kernel_kills_the_node(
        tmp_path: Path) -> None:
    """An app whose server's mailbox is unbounded (``max_mailbox_bytes = 0``) is flooded with
    3000 x 1 MiB. The node runs with ``--memory-limit 2e9 --memory-guard 0.25``: past 500 MB
    resident, the guard ends the hog's processes with ``memory_guard``; the node lives, its
    memory stays far from the 3 GB the flood would queue, and the innocent app answers."""
    hog = write(tmp_path, "hog", HOG_MANIFEST, "floodmod", FLOOD_CODE)
    good = write(tmp_path, "good", GOOD_MANIFEST, "goodmod", GOOD_CODE)
    node = DevNode("dev", tmp_path / "dev", "",
                   extra=["--memory-limit", "2000000000", "--memory-guard", "0.25"])
    try:
        node.start()
        assert node.process is not None
        with node.client() as client:
            client.submit(good, wait=60)
            client.submit(hog, wait=60)
            assert client.call("counter", "tick", timeout=10) == 1
            peak = 0
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss(node.process.pid))  # type: ignore[union-attr]
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                with pytest.raises(rebeam.Exit) as ended:
                    client.call("driver", ("flood", 3000, 1 << 20), timeout=300)
            finally:
                done.set()
                sampler.join()
            # The driver dies mid-handler: its caller sees memory_guard or, when the
            # interrupted handler's own end wins the race, its ProcessKilled crash.
            assert any(word in str(ended.value.reason) for word in
                       ("memory_guard", "ProcessKilled")), ended.value
            assert node.process.poll() is None, node.output()[-3000:]
            assert peak < 1_200_000_000, f"the node reached {peak >> 20} MiB"
            assert "memory guard" in node.output() and "hog" in node.output()
            assert client.call("counter", "tick", timeout=10) == 2
            assert client.app("good").status == "running"
    finally:
        node.stop()


def test_pids_naming_made_up_nodes_are_refused_and_do_not_grow_the_node(dev: DevNode) -> None:
    """200 sends to pids with 1 MiB node names used to intern every name for the life of
    the node (+100 MB). Node names from the wire now follow the node id grammar (at most
    128 bytes): the gateway refuses such a pid with a message naming the rule and keeps
    nothing. (Sent with the raw stub: the client itself refuses pids of unknown nodes.)"""
    import grpc  # type: ignore[import-untyped]

    from harness import TOKEN
    from rebeam.client._proto import common_pb2, gateway_pb2, gateway_pb2_grpc

    assert dev.process is not None
    with dev.client() as client:
        address = next(n.address for n in client.nodes() if n.status == "alive")
    auth = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 8 << 20)]) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]
        before = 0
        for i in range(201):
            if i == 1:
                before = rss(dev.process.pid)  # after the gateway's first use
            request = gateway_pb2.DeliverRequest(kind=gateway_pb2.DELIVERY_KIND_SEND,
                                                 payload=b"\x80\x05K\x01.", timeout_s=5)
            request.pid.CopyFrom(common_pb2.Pid(node="n" * (1 << 20) + str(i), incarnation=1,
                                                serial=2))
            with pytest.raises(grpc.RpcError) as refused:
                stub.Deliver(request, timeout=10, metadata=auth)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "no valid node" in (refused.value.details() or "")
        grown = rss(dev.process.pid) - before
        assert grown < 40 << 20, f"the node grew by {grown >> 20} MiB"
        assert dev.process.poll() is None
