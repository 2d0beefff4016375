"""Fair service under abuse, on a real controller: a cap on open connections per listener
(past it new connections are closed at once, while connected clients keep working), idle
connections closed after the idle timeout, and per-token request rates (one token
hammering is refused with RESOURCE_EXHAUSTED / HTTP 429 naming the limit; another token is
not affected; the client waits a refusal out within its timeout)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

import rebeam
import rebeam.client
from harness import TOKEN, Cluster, scratch_dir, wait_for

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
