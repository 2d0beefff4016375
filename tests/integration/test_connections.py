"""Fair service under abuse, on a real controller: a cap on open connections per listener
(past it new connections are closed at once, while connected clients keep working), idle
connections closed after the idle timeout, per-token request rates (one token
hammering is refused with RESOURCE_EXHAUSTED / HTTP 429 naming the limit; another token is
not affected; the client waits a refusal out within its timeout), and a per-token cap on
requests and streams in flight (pending calls at a gateway, over gRPC and the client wire;
event streams at the HTTP server), whose slots come back when a call is cancelled, its
connection closed or a stream's client goes away."""

from __future__ import annotations

import socket
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

import rebeam
import rebeam.client
from harness import TOKEN, Cluster, DevNode, scratch_dir, wait_for
from rebeam.client import _wire
from rebeam.client._proto import gateway_pb2, gateway_pb2_grpc

CAP = 8


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-connections-test-")


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes ``sock`` (end of stream or reset) within ``seconds``."""
    deadline = time.monotonic() + seconds
    try:
        # What the server sends first (its HTTP/2 settings) is read past, up to the close.
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        pass
    return False


def metric(c: Cluster, name: str, server: str) -> float:
    request = urllib.request.Request(f"http://{c.members[0].http}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{server="{server}"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {server} not in /metrics")


def fill(address: str, count: int) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=5) for _ in range(count)]


def test_a_full_listener_refuses_new_connections_at_once_and_closes_idle_ones(workdir: Path) -> None:
    c = Cluster.create(workdir, 1, ["--max-connections", str(CAP), "--idle-timeout-ms", "4000"])
    try:
        c.start()
        with c.client() as client:
            assert client.status()  # one connection, held by this client
            held = fill(c.members[0].api, CAP - 1)
            try:
                extra = fill(c.members[0].api, 1)[0]
                started = time.monotonic()
                assert closed_within(extra, 3.0), "a connection past the cap was kept open"
                assert time.monotonic() - started < 2.0, "refused only by the idle timeout"
                extra.close()
                assert client.status(), "a client connected before the flood still works"
                assert metric(c, "rebeam_connections_refused_total", "api") >= 1
                # The raw connections send nothing: the idle timeout closes them.
                assert all(closed_within(s, 15.0) for s in held), "idle connections kept open"
                assert metric(c, "rebeam_connections_idle_closed_total", "api") >= CAP - 1
            finally:
                for s in held:
                    s.close()
        # After the flood, a new client works at once.
        with c.client(timeout=3) as again:
            assert again.status()
        # The HTTP listener is held to the same cap.
        http = fill(c.members[0].http, CAP)
        try:
            over = fill(c.members[0].http, 1)[0]
            assert closed_within(over, 3.0)
            over.close()
        finally:
            for s in http:
                s.close()
        wait_for("the HTTP slots to come back",
                 lambda: metric(c, "rebeam_connections_refused_total", "http") >= 1)
    finally:
        c.stop()


def test_an_idle_client_connection_is_closed_and_the_client_reconnects(workdir: Path) -> None:
    c = Cluster.create(workdir, 1, ["--idle-timeout-ms", "1000"])
    try:
        c.start()
        with c.client() as client:
            assert client.status()
            before = metric(c, "rebeam_connections_idle_closed_total", "api")
            wait_for("the idle client connection to be closed",
                     lambda: metric(c, "rebeam_connections_idle_closed_total", "api") > before,
                     timeout=10)
            assert client.status(), "the client reconnects after an idle close"
    finally:
        c.stop()


def hammer(address: str, token: str, calls: int) -> list[grpc.RpcError]:
    """Calls ClusterService/Status ``calls`` times as fast as possible; the refusals."""
    refused = []
    with grpc.insecure_channel(address) as channel:
        status = channel.unary_unary("/rebeam.v1.ClusterService/Status",
                                     request_serializer=None, response_deserializer=None)
        for _ in range(calls):
            try:
                status(b"", timeout=5, metadata=[("authorization", f"Bearer {token}")])
            except grpc.RpcError as e:
                refused.append(e)
    return refused


def test_one_token_over_its_rate_is_refused_and_another_is_not(workdir: Path) -> None:
    c = Cluster.create(workdir, 1, ["--rate-limit", "2", "--rate-burst", "10"])
    try:
        c.start()
        with c.client() as admin:
            busy = admin.create_token("read", ttl=600, note="busy")[0]
            quiet = admin.create_token("read", ttl=600, note="quiet")[0]
        refused = hammer(c.members[0].api, busy, 20)
        assert refused, "20 calls at once passed a burst of 10"
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused), refused
        details = refused[0].details()
        assert "rate limit" in details and "2 requests/s" in details and "--rate-limit" in details
        assert not hammer(c.members[0].api, quiet, 5), "another token was limited too"
        # The client types the refusal, and waits it out when its timeout allows.
        with rebeam.connect(f"http://{c.members[0].api}", token=busy, timeout=0.2) as hasty:
            with pytest.raises(rebeam.client.RateLimited) as raised:
                hasty.status()
            assert raised.value.retry_after > 0
        with rebeam.connect(f"http://{c.members[0].api}", token=busy, timeout=5) as patient:
            assert patient.status()
        # HTTP counts the same way and answers 429 with Retry-After.
        codes = []
        for _ in range(15):
            request = urllib.request.Request(f"http://{c.members[0].http}/api/v1/cluster",
                                             headers={"Authorization": f"Bearer {busy}"})
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    codes.append(r.status)
            except urllib.error.HTTPError as e:
                codes.append(e.code)
                if e.code == 429:
                    assert e.headers["Retry-After"]
                    assert b"rate limit" in e.read()
        assert 429 in codes, codes
        # Nodes and members are not held to client rates: the cluster still answers.
        with c.client() as admin:
            assert admin.status()
    finally:
        c.stop()


STREAMS = 3
HOLDER = "streams-holder-token"
BYSTANDER = "streams-bystander-token"
# gRPC status code of RESOURCE_EXHAUSTED, as the client wire reports refusals.
WIRE_RESOURCE_EXHAUSTED = 8


def mute_app(root: Path) -> Path:
    """An app with a server that never replies (a call to it stays in flight until its
    timeout) and one that echoes."""
    app = root / "app"
    app.mkdir()
    (app / "mutes.py").write_text(textwrap.dedent("""
        import rebeam

        class Mute(rebeam.GenServer):
            def handle_call(self, request, sender):
                return rebeam.noreply()

        class Echo(rebeam.GenServer):
            def handle_call(self, request, sender):
                return request
    """))
    (app / "rebeam.toml").write_text(textwrap.dedent("""
        [app]
        name = "mutes"
        version = "1"

        [[children]]
        start = "mutes:Mute"
        name = "mute"
        global = true

        [[children]]
        start = "mutes:Echo"
        name = "echo"
        global = true
    """))
    return app


def call(target: str, timeout_s: float) -> gateway_pb2.DeliverRequest:
    request = gateway_pb2.DeliverRequest(kind=gateway_pb2.DELIVERY_KIND_CALL,
                                         payload=b"\x80\x05K\x01.", timeout_s=timeout_s)
    setattr(request, "global", target)
    return request


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_one_token_holds_at_most_its_streams_and_a_cancelled_or_closed_one_frees_a_slot(
        workdir: Path) -> None:
    dev = DevNode("streams", workdir / "node", "", extra=[
        "--client-token", f"call:{HOLDER}", "--client-token", f"call:{BYSTANDER}",
        "--max-streams-per-token", str(STREAMS)])
    dev.start()
    try:
        with dev.client() as admin:
            admin.submit(mute_app(workdir), wait=60)
            address = next(n.address for n in admin.nodes() if n.status == "alive")

            def mute_handled() -> int:
                mute = [p for p in admin.processes("mutes") if p.child == "mute"]
                return mute[0].messages_handled if mute else 0

            with grpc.insecure_channel(address) as channel:
                stub = gateway_pb2_grpc.GatewayServiceStub(channel)  # type: ignore[no-untyped-call]

                def echo(token: str) -> bool:
                    """Whether a call with ``token`` is served (False: refused at the cap)."""
                    try:
                        stub.Deliver(call("echo", 5), timeout=10, metadata=bearer(token))
                        return True
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                        return False

                held = [stub.Deliver.future(call("mute", 120), timeout=120,
                                            metadata=bearer(HOLDER)) for _ in range(STREAMS)]
                wait_for("the held calls to reach the server", lambda: mute_handled() >= STREAMS)
                # One more is refused before it is delivered, naming the limit and its flag.
                with pytest.raises(grpc.RpcError) as over:
                    stub.Deliver(call("echo", 5), timeout=10, metadata=bearer(HOLDER))
                assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                details = over.value.details()
                assert "stream limit" in details and f"{STREAMS} requests" in details
                assert "--max-streams-per-token" in details
                # The client wire counts with the gRPC gateway.
                wire = _wire.Connection.open(address, "127.0.0.1", HOLDER, 5.0, None, {})
                try:
                    with pytest.raises(_wire.Refused) as refused:
                        wire.deliver(call("echo", 5), "", 5.0)
                    assert refused.value.code == WIRE_RESOURCE_EXHAUSTED
                    assert "--max-streams-per-token" in refused.value.message
                finally:
                    wire.close()
                # Another token is served; so is the admin listing processes above.
                assert echo(BYSTANDER)
                # The client types the refusal (and waits it out while its timeout allows).
                with rebeam.connect(dev.url, token=HOLDER, timeout=0.3) as hasty:
                    with pytest.raises(rebeam.client.RateLimited):
                        hasty.call("echo", 1, timeout=0.3)
                # Cancelling a call gives its slot back.
                held[0].cancel()
                wait_for("the cancelled call's slot to come back", lambda: echo(HOLDER))
                # A call pending on a client wire connection holds a slot until the
                # connection closes.
                wire = _wire.Connection.open(address, "127.0.0.1", HOLDER, 5.0, None, {})
                handled = mute_handled()
                wire._write(gateway_pb2.ClientRequest(id=1, deliver=call("mute", 120)))
                wait_for("the wire's call to reach the server", lambda: mute_handled() > handled)
                assert not echo(HOLDER), "the wire's pending call did not take the freed slot"
                wire.close()
                wait_for("the closed connection's slot to come back", lambda: echo(HOLDER))
                for f in held[1:]:
                    f.cancel()
    finally:
        dev.stop()


def test_event_streams_at_the_http_server_are_capped_per_token(workdir: Path) -> None:
    c = Cluster.create(workdir, 1, ["--max-streams-per-token", "2"])
    try:
        c.start()
        with c.client() as admin:
            busy = admin.create_token("read", ttl=600, note="busy")[0]
            quiet = admin.create_token("read", ttl=600, note="quiet")[0]

        def stream(token: str) -> object:
            request = urllib.request.Request(f"http://{c.members[0].http}/api/v1/stream",
                                             headers={"Authorization": f"Bearer {token}"})
            return urllib.request.urlopen(request, timeout=10)

        def opens(token: str) -> bool:
            try:
                stream(token).close()  # type: ignore[attr-defined]
                return True
            except urllib.error.HTTPError as e:
                assert e.code == 429, e
                return False

        live = [stream(busy), stream(busy)]
        try:
            with pytest.raises(urllib.error.HTTPError) as over:
                stream(busy)
            assert over.value.code == 429
            assert over.value.headers["Retry-After"]
            body = over.value.read().decode()
            assert "--max-streams-per-token" in body and "stream limit" in body
            assert opens(quiet), "another token was refused too"
            refused = 0.0
            request = urllib.request.Request(f"http://{c.members[0].http}/metrics",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=5) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith("rebeam_streams_refused_total "):
                        refused = float(line.split()[1])
            assert refused >= 1
            # The client going away gives the stream's slot back.
            live.pop().close()  # type: ignore[attr-defined]
            wait_for("the closed stream's slot to come back", lambda: opens(busy), timeout=30)
        finally:
            for r in live:
                r.close()  # type: ignore[attr-defined]
    finally:
        c.stop()
