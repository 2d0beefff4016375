"""The client wire (framed `Deliver` on a socket to a node's gateway port): authorized as
the gRPC `Deliver` is, request by request, and what `rebeam.connect` uses for calls."""

from __future__ import annotations

import pickle
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import rebeam
from harness import TOKEN, DevNode, scratch_dir
from rebeam.client import _wire
from rebeam.client._proto import gateway_pb2

READ_TOKEN = "wire-read-token"
CALL_TOKEN = "wire-call-token"
# gRPC status codes, as the wire reports refusals.
INVALID_ARGUMENT, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAUTHENTICATED = 3, 7, 8, 16


@pytest.fixture(scope="module")
def node() -> Iterator[DevNode]:
    for root in scratch_dir("rebeam-client-wire-"):
        app = root / "app"
        app.mkdir()
        (app / "echoes.py").write_text(textwrap.dedent("""
            import rebeam

            class Echo(rebeam.GenServer):
                def handle_call(self, request, sender):
                    if isinstance(request, tuple) and request[:1] == ("bytes",):
                        return b"x" * request[1]
                    return request
        """))
        (app / "rebeam.toml").write_text(textwrap.dedent("""
            [app]
            name = "wire"
            version = "1.0.0"

            [[children]]
            start = "echoes:Echo"
            name = "wire-echo"
            global = true
        """))
        dev = DevNode("wire", root / "node", "", extra=[
            "--client-token", f"read:{READ_TOKEN}", "--client-token", f"call:{CALL_TOKEN}",
            "--rate-limit", "50", "--rate-burst", "50"])
        dev.start()
        try:
            with dev.client() as client:
                client.submit(app, wait=60)
            yield dev
        finally:
            dev.stop()


def gateway(node: DevNode) -> str:
    with node.client() as client:
        (only,) = [n for n in client.nodes() if n.status == "alive"]
        return only.address


def open_wire(node: DevNode, token: str) -> _wire.Connection:
    return _wire.Connection.open(gateway(node), "127.0.0.1", token, 5.0, None, {})


def call_request(target: str, value: object) -> gateway_pb2.DeliverRequest:
    request = gateway_pb2.DeliverRequest(kind=gateway_pb2.DELIVERY_KIND_CALL,
                                         payload=pickle.dumps(value), timeout_s=5.0)
    setattr(request, "global", target)
    return request


def test_a_call_over_the_wire_gets_its_reply(node: DevNode) -> None:
    conn = open_wire(node, CALL_TOKEN)
    try:
        for i in range(3):
            reply = conn.deliver(call_request("wire-echo", ("hello", i)), "", 5.0)
            assert reply.WhichOneof("result") == "value"
            assert pickle.loads(reply.value) == ("hello", i)
    finally:
        conn.close()


def test_the_hello_is_refused_without_the_right_token_or_role(node: DevNode) -> None:
    with pytest.raises(_wire.Refused) as wrong:
        open_wire(node, "not-a-token")
    assert wrong.value.code == UNAUTHENTICATED
    # Delivering needs the call role, as the gRPC Deliver does.
    with pytest.raises(_wire.Refused) as reader:
        open_wire(node, READ_TOKEN)
    assert reader.value.code == PERMISSION_DENIED
    assert "`call` role" in reader.value.message


def test_a_bad_request_is_refused_alone_and_the_connection_serves_on(node: DevNode) -> None:
    conn = open_wire(node, CALL_TOKEN)
    try:
        with pytest.raises(_wire.Refused) as bad:
            conn.deliver(gateway_pb2.DeliverRequest(kind=gateway_pb2.DELIVERY_KIND_CALL), "", 5.0)
        assert bad.value.code == INVALID_ARGUMENT
        assert "target" in bad.value.message
        reply = conn.deliver(call_request("wire-echo", "after"), "", 5.0)
        assert reply.WhichOneof("result") == "value"
    finally:
        conn.close()


def test_every_request_is_held_to_the_rate_limit(node: DevNode) -> None:
    conn = open_wire(node, CALL_TOKEN)
    try:
        refused = None
        for _ in range(200):
            try:
                conn.deliver(call_request("wire-echo", 1), "", 5.0)
            except _wire.Refused as e:
                refused = e
                break
        assert refused is not None, "200 requests at once never met the limit of 50/s"
        assert refused.code == RESOURCE_EXHAUSTED and "rate limit" in refused.message
    finally:
        conn.close()


def test_an_opening_that_is_neither_grpc_peer_nor_client_is_closed(node: DevNode) -> None:
    host, port = gateway(node).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"RBCLNT1\n" + b"\xff\xff\xff\xff")  # a hello longer than any allowed
        assert s.recv(64) == b""


def test_rebeam_connect_calls_over_the_wire(node: DevNode) -> None:
    with rebeam.connect(node.url, token=TOKEN) as client:
        assert client.call("wire-echo", {"x": 1}) == {"x": 1}
        # The call left an idle wire connection to the node for the next one.
        assert client._wire_pool.take(gateway(node)) is not None


def test_call_many_streams_the_calls_and_keeps_their_order(node: DevNode,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def one_by_one(*_: object) -> None:
        raise AssertionError("call_many sent a call on its own instead of streaming")

    with rebeam.connect(node.url, token=TOKEN) as client:
        monkeypatch.setattr(_wire.Connection, "deliver", one_by_one)
        # More calls than the window and than the node's burst of 50 a second: the refused
        # ones (refused before delivery) go again when the limit lets them.
        requests = [("item", i) for i in range(120)]
        assert client.call_many("wire-echo", requests) == requests
        assert client.call_many("wire-echo", []) == []
        # The stream left its connection in step for the next one.
        assert client.call_many("wire-echo", ["again"]) == ["again"]


def test_call_many_raises_what_call_would(node: DevNode) -> None:
    with rebeam.connect(node.url, token=TOKEN) as client:
        with pytest.raises(rebeam.Exit) as gone:
            client.call_many("wire-nobody", [1, 2])
        assert gone.value.reason == "noproc"
        with pytest.raises(TypeError):
            client.call_many("wire-echo", [lambda: None])


def test_replies_larger_than_the_socket_takes_at_once_arrive_whole_and_in_step(
        node: DevNode) -> None:
    # A reply written in part by the callee's thread is finished by the connection's task
    # before anything else is written: every frame after it arrives whole.
    sizes = [24 << 20, 3, 8 << 20, 5, 1, 16 << 20, 7]
    conn = open_wire(node, CALL_TOKEN)
    try:
        for n in sizes:
            reply = conn.deliver(call_request("wire-echo", ("bytes", n)), "", 30.0)
            assert reply.WhichOneof("result") == "value"
            assert pickle.loads(reply.value) == b"x" * n
        got = conn.deliver_many([call_request("wire-echo", ("bytes", n)) for n in sizes], "",
                                30.0, 32)
        assert [len(pickle.loads(r.reply.value)) for r in got] == sizes
    finally:
        conn.close()


def wire_node(root: Path, name: str, extra: list[str]) -> DevNode:
    """A dev node serving an echo as `<name>-echo`, with `extra` flags."""
    app = root / "app"
    app.mkdir()
    (app / "echoes.py").write_text(textwrap.dedent("""
        import rebeam

        class Echo(rebeam.GenServer):
            def handle_call(self, request, sender):
                return request
    """))
    (app / "rebeam.toml").write_text(textwrap.dedent(f"""
        [app]
        name = "{name}"
        version = "1.0.0"

        [[children]]
        start = "echoes:Echo"
        name = "{name}-echo"
        global = true
    """))
    dev = DevNode(name, root / "node", "", extra=["--client-token", f"call:{CALL_TOKEN}", *extra])
    dev.start()
    try:
        with dev.client() as client:
            client.submit(app, wait=60)
    except BaseException:
        dev.stop()
        raise
    return dev


def test_the_token_slot_is_back_before_the_reply_arrives() -> None:
    # With one request in flight per token, calls one after another are never refused: the
    # slot is given back before the reply is written, also when the callee's thread writes it.
    for root in scratch_dir("rebeam-client-wire-slot-"):
        dev = wire_node(root, "wire1", ["--max-streams-per-token", "1"])
        try:
            conn = open_wire(dev, CALL_TOKEN)
            try:
                for i in range(200):
                    reply = conn.deliver(call_request("wire1-echo", i), "", 5.0)
                    assert pickle.loads(reply.value) == i
            finally:
                conn.close()
        finally:
            dev.stop()


def test_more_requests_than_a_connection_may_have_in_flight_are_all_answered() -> None:
    # 3,000 requests sent at once on one connection, over its 1,024 in flight: the node stops
    # reading until earlier ones end, including those whose replies the callee's thread wrote.
    for root in scratch_dir("rebeam-client-wire-many-"):
        dev = wire_node(root, "wire2", ["--max-streams-per-token", "0", "--rate-limit", "0"])
        try:
            conn = open_wire(dev, CALL_TOKEN)
            try:
                requests = [call_request("wire2-echo", i) for i in range(3000)]
                got = conn.deliver_many(requests, "", 30.0, len(requests))
                assert [r.code for r in got] == [0] * len(requests)
                assert [pickle.loads(r.reply.value) for r in got] == list(range(3000))
            finally:
                conn.close()
        finally:
            dev.stop()
