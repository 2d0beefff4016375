"""The peer transport on real nodes: only a peer that proves it holds the cluster secret may
put frames into a node, over TCP or the node's local Unix socket; a flood toward a node
behind a slow path makes the sender wait (backpressure) rather than lose messages."""

from __future__ import annotations

import pickle
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import peer_wire
import pytest

from harness import SECRET, TOKEN, Blackhole, Cluster, Nodes, _cluster, scratch_dir, wait_for
from rebeam.testing import free_port


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-peer-wire-test-")


@pytest.fixture
def controllers() -> Iterator[Cluster]:
    yield from _cluster(1)


@pytest.fixture
def nodes(workdir: Path, controllers: Cluster) -> Iterator[Nodes]:
    ns = Nodes(workdir, ",".join(m.api for m in controllers.members))
    try:
        yield ns
    finally:
        ns.stop()


SINK = """
    import rebeam

    def main():
        me = rebeam.self_pid()
        print("sink", me.node, me.incarnation, me.serial, flush=True)
        while True:
            print("got", rebeam.receive(), flush=True)

    rebeam.run(main)
"""


def test_only_a_peer_holding_the_secret_puts_frames_in(nodes: Nodes, controllers: Cluster) -> None:
    a = nodes.start("a", SINK)
    a.wait_output("sink ")
    line = next(x for x in a.output().splitlines() if x.startswith("sink "))
    _, node, incarnation, serial = line.split()
    pid = (node, int(incarnation), int(serial))
    with controllers.client(token=TOKEN) as client:
        address = str(wait_for("a's address", lambda: next(
            (n.address for n in client.nodes() if n.id == "a" and n.address), None)))

    # A wrong secret: refused with the reason, and frames written anyway are never read.
    with peer_wire.connect(address) as intruder:
        refused = peer_wire.handshake(intruder, "mallory", "not-the-secret")
        assert "wrong cluster secret" in refused
        try:
            peer_wire.send_batch(intruder, *pid, pickle.dumps("from the intruder"))
        except OSError:
            pass
        assert peer_wire.closed(intruder)
    # No handshake at all: a batch where the hello belongs is refused too.
    with peer_wire.connect(address) as intruder:
        assert peer_wire.recv_message(intruder) is not None, "the challenge"
        peer_wire.send_batch(intruder, *pid, pickle.dumps("without a handshake"))
        assert peer_wire.closed(intruder)

    # Peers on the same host use the node's Unix socket: the same handshake guards it.
    with peer_wire.connect_unix(peer_wire.local_socket(address)) as intruder:
        assert "wrong cluster secret" in peer_wire.handshake(intruder, "mallory", "nope")
        assert peer_wire.closed(intruder)
    with peer_wire.connect_unix(peer_wire.local_socket(address)) as peer:
        assert peer_wire.handshake(peer, "trusted", SECRET) == ""
        peer_wire.send_batch(peer, *pid, pickle.dumps("over the local socket"))
        a.wait_output("got over the local socket")

    # The same frame from a peer that proves the secret arrives: the refusals above were the
    # handshake's doing.
    with peer_wire.connect(address) as peer:
        assert peer_wire.handshake(peer, "trusted", SECRET) == ""
        peer_wire.send_batch(peer, *pid, pickle.dumps("from a member"))
        a.wait_output("got from a member")
    assert "from the intruder" not in a.output()
    assert "without a handshake" not in a.output()
    assert "a peer connection was refused" in a.output()


SLOW = """
    import rebeam

    class Counter(rebeam.GenServer):
        def init(self):
            self.count = 0
        def handle_cast(self, request):
            self.count += 1
        def handle_call(self, request, sender):
            return self.count

    def main():
        rebeam.register_global("slow", rebeam.spawn(Counter))
        print("slow ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

FLOOD = """
    import time
    import rebeam

    def main():
        slow = rebeam.whereis_global("slow")
        payload = b"x" * 256
        for _ in range({count}):
            rebeam.cast(slow, payload)
        print("flood sent", flush=True)
        deadline = time.monotonic() + 120
        while rebeam.call(slow, "count", timeout=30) < {count} and time.monotonic() < deadline:
            time.sleep(0.05)
        print("flood received", rebeam.call(slow, "count", timeout=30), flush=True)
        rebeam.receive()

    rebeam.run(main)
"""


class Throttle(Blackhole):
    """A forwarder that carries at most ``rate`` bytes a second each way: a slow network
    path, behind which a flood fills the sending node's link queue."""

    rate = 8_000_000

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        for sock in (dst, src):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def metric(url: str, name: str) -> float:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {SECRET}"})
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert values, f"{name} not in {url}"
    return sum(values)


def test_a_full_link_makes_the_sender_wait_instead_of_dropping(nodes: Nodes) -> None:
    # a's link to b goes through a slow path: b advertises the throttle's address.
    port = free_port()
    throttle = Throttle(f"127.0.0.1:{port}")
    try:
        b = nodes.start("b", SLOW, extra=["--listen", f"127.0.0.1:{port}",
                                          "--advertise", throttle.address])
        b.wait_output("slow ready")
        http = free_port()
        # Twice a link's queue (65,536 frames), far more than the path carries meanwhile.
        count = 150_000
        a = nodes.start("a", FLOOD.format(count=count),
                        extra=["--http-listen", f"127.0.0.1:{http}"])
        a.wait_output("flood sent", timeout=120)
        a.wait_output(f"flood received {count}", timeout=150)
        metrics = f"http://127.0.0.1:{http}/metrics"
        assert metric(metrics, "rebeam_peer_send_waits_total") > 0, "the sender waited for room"
        assert metric(metrics, "rebeam_peer_frames_dropped_total") == 0, "nothing was dropped"
    finally:
        throttle.close()


MIRROR = """
    import rebeam

    def sig(v):
        if isinstance(v, tuple):
            return ("tuple", tuple(sig(x) for x in v))
        return (type(v).__name__, repr(v))

    class Mirror(rebeam.GenServer):
        def handle_call(self, request, sender):
            return (sig(request), request)

    class Order(rebeam.GenServer):
        def init(self):
            self.last, self.count, self.bad = {}, 0, []
        def handle_cast(self, request):
            sender, n = request
            if n != self.last.get(sender, -1) + 1:
                self.bad.append((sender, self.last.get(sender), n))
            self.last[sender] = n
            self.count += 1
        def handle_call(self, request, sender):
            return (self.count, self.bad[:5])

    def main():
        rebeam.register_global("mirror", rebeam.spawn(Mirror))
        rebeam.register_global("order", rebeam.spawn(Order))
        print("mirror ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

SENDERS = """
    import rebeam

    def sig(v):
        if isinstance(v, tuple):
            return ("tuple", tuple(sig(x) for x in v))
        return (type(v).__name__, repr(v))

    def nested(depth):
        return (depth, nested(depth - 1)) if depth else ()

    VALUES = [
        None, True, False, 0, 1, 255, 256, 65535, 65536, -1, -256, -2**31, 2**31 - 1, 2**31,
        2**63 - 1, -2**63, 2**64, -2**64, 10**40, 1.5, -0.0, float("inf"), float("nan"), 1e-300,
        "", "x", "x" * 255, "x" * 256, "é€😀" * 100, "\\ud800", b"", b"\\x00" * 255,
        b"\\xff" * 256, b"y" * 70_000, (), (1,), (1, "a"), (1, "a", b"b"), (1, 2, 3, 4, 5),
        (None, (True, (2.5, ("s", b"b")))), nested(7), nested(12), frozenset((1, 2)),
        ("inc", b"x" * 64), [1, 2], dict(a=(1,)),
    ]

    def sender(k, main, n):
        order, mirror = rebeam.whereis_global("order"), rebeam.whereis_global("mirror")
        for i in range(n):
            rebeam.cast(order, (k, i))
            if i % 50 == 0:
                # A call waits for its reply: the link goes idle, the next frames go direct.
                rebeam.call(mirror, i)
        rebeam.send(main, ("done", k))

    def main():
        mirror = rebeam.whereis_global("mirror")
        for v in VALUES + [(rebeam.self_pid(), "pid")]:
            got, back = rebeam.call(mirror, v)
            assert got == sig(v), (v, got)
            assert sig(back) == sig(v), (v, back)
        print("values ok", flush=True)
        me = rebeam.self_pid()
        for k in range({senders}):
            rebeam.spawn(sender, k, me, {count})
        for _ in range({senders}):
            rebeam.receive()
        print("order", *rebeam.call(rebeam.whereis_global("order"), "count"), flush=True)
        rebeam.receive()  # stay up for the metrics

    rebeam.run(main)
"""


def test_values_and_per_sender_order_survive_direct_and_queued_writes(nodes: Nodes) -> None:
    b = nodes.start("b", MIRROR)
    b.wait_output("mirror ready")
    http = free_port()
    senders, count = 4, 3_000
    a = nodes.start("a", SENDERS.format(senders=senders, count=count),
                    extra=["--http-listen", f"127.0.0.1:{http}"])
    # Every value comes back equal and of the same types, whichever way it was pickled.
    a.wait_output("values ok", timeout=60)
    a.wait_output("order ", timeout=120)
    line = next(x for x in a.output().splitlines() if x.startswith("order "))
    assert line == f"order {senders * count} []", f"casts lost or out of order: {line}"
    metrics = f"http://127.0.0.1:{http}/metrics"
    direct = metric(metrics, "rebeam_peer_frames_direct_total")
    sent = metric(metrics, "rebeam_peer_frames_sent_total")
    assert 0 < direct < sent, f"both paths were taken: {direct} of {sent} frames direct"
