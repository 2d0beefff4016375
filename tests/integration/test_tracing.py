"""OpenTelemetry traces across the cluster: a Python client calls a server on one node, whose
handler calls a server on another; a real OTLP/gRPC receiver run by the test gets one
connected trace with spans from the client, both nodes and the handler's own span. A client's
admin call continues into the controller's request span and its Raft write, on a standalone
controller and on a dev node's embedded one; a background write is a trace of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from harness import TOKEN, Cluster, DevNode, Nodes, _cluster, scratch_dir, wait_for


@dataclass(frozen=True)
class Received:
    """One span as the receiver got it."""

    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    node: str
    service: str
    attributes: dict[str, Any]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method
        got = []
        for rs in request.resource_spans:
            res = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    got.append(Received(s.name, s.trace_id.hex(), s.span_id.hex(),
                                        s.parent_span_id.hex(), s.kind,
                                        res.get("rebeam.node", ""), res.get("service.name", ""),
                                        attrs))
        with self.lock:
            self.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.spans)


def _value(v: Any) -> Any:
    field = v.WhichOneof("value")
    return getattr(v, field) if field else None


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    r = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(r, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield r, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from scratch_dir("rebeam-tracing-test-")


@pytest.fixture
def controllers() -> Iterator[Cluster]:
    yield from _cluster(1)


FRONT = """
    import rebeam
    from rebeam import Global

    class Front(rebeam.GenServer):
        def handle_call(self, request, sender):
            return ("front", rebeam.call(Global("back"), request))

    def main():
        rebeam.register_global("front", rebeam.spawn(Front))
        print("front ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

BACK = """
    import rebeam
    from opentelemetry import trace

    tracer = trace.get_tracer("test.back")

    class Back(rebeam.GenServer):
        def handle_call(self, request, sender):
            # The app's own span: a child of the message's span.
            with tracer.start_as_current_span("back.work") as span:
                span.set_attribute("request", request)
                return ("back", request)

    def main():
        rebeam.register_global("back", rebeam.spawn(Back))
        print("back ready", flush=True)
        rebeam.receive()

    rebeam.run(main)
"""

# A client script's start: it exports its spans, as service test-client, to argv[1].
TRACED_CLIENT = """
    import sys
    import rebeam
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    endpoint, url, token = sys.argv[1:4]
    provider = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint,
                                                                     insecure=True)))
    trace.set_tracer_provider(provider)
"""

CLIENT = TRACED_CLIENT + """
    with rebeam.connect(url, token=token) as client:
        print(client.call("front", 7), flush=True)
    provider.shutdown()
"""


def test_a_client_call_across_two_nodes_is_one_connected_trace(
        receiver: tuple[Receiver, str], controllers: Cluster, workdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rec, endpoint = receiver
    # Batches leave every 100 ms instead of every 5 s (both SDKs read this).
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    nodes = Nodes(workdir, controllers.members[0].api)
    try:
        flags = ["--client-token", TOKEN, "--otlp-endpoint", endpoint]
        front = nodes.start("front", FRONT, extra=flags)
        back = nodes.start("back", BACK, extra=flags)
        front.wait_output("front ready")
        back.wait_output("back ready")
        script = workdir / "client.py"
        script.write_text(textwrap.dedent(CLIENT))
        done = subprocess.run([sys.executable, str(script), endpoint, controllers.url, TOKEN],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() == "('front', ('back', 7))"

        # The client's own calls (its controller requests to find gateways have spans of
        # their own, named by the gRPC method).
        client_spans = [s for s in rec.snapshot()
                        if s.service == "test-client" and not s.name.startswith("rebeam.v1.")]
        assert len(client_spans) == 1, client_spans
        root = client_spans[0]
        assert root.name == "call" and root.parent == ""

        def whole_trace() -> list[Received] | None:
            spans = [s for s in rec.snapshot() if s.trace_id == root.trace_id]
            names = {(s.node, s.name) for s in spans}
            wanted = {("back", "handle_call"), ("back", "back.work"), ("front", "handle_call")}
            return spans if wanted <= names else None

        spans = wait_for("the nodes' spans of the client's trace", whole_trace,
                         on_timeout=lambda: "\n".join(map(str, rec.snapshot())))
        assert isinstance(spans, list)
    finally:
        nodes.stop()

    by_id = {s.span_id: s for s in spans}
    # Connected: one root (the client's span), every other span's parent is in the trace.
    assert [s for s in spans if s.parent == ""] == [root]
    orphans = [s for s in spans if s.parent and s.parent not in by_id]
    assert not orphans, orphans

    def chain(span: Received) -> list[tuple[str, str]]:
        out = []
        while span.parent:
            span = by_id[span.parent]
            out.append((span.node or span.service, span.name))
        return out

    work = next(s for s in spans if s.name == "back.work")
    # The handler's span hangs under the back node's handling of the front's call, which
    # hangs under the front's handling of the client's call, which entered at a gateway.
    path = chain(work)
    assert path[0] == ("back", "handle_call"), path
    assert ("front", "call") in path and ("front", "handle_call") in path, path
    assert path[-1] == ("test-client", "call"), path
    assert path.index(("front", "call")) < path.index(("front", "handle_call")), path
    gateway = [s for s in spans if s.name == "call" and s.kind == 2]  # SPAN_KIND_SERVER
    assert len(gateway) == 1 and gateway[0].parent == root.span_id, gateway
    for handled in (s for s in spans if s.name == "handle_call"):
        assert handled.attributes["rebeam.mailbox_wait_us"] >= 0
        assert handled.attributes["rebeam.pid"].startswith(f"<{handled.node}.")
    assert work.attributes["request"] == 7


ADMIN_CLIENT = TRACED_CLIENT + """
    with rebeam.connect(url, token=token) as client:
        client.create_token("read", note="traced")
    with rebeam.connect(url, token="wrong-token") as client:
        try:
            client.names()
        except rebeam.client.AuthError:
            print("refused", flush=True)
    provider.shutdown()
"""


def _admin_trace(rec: Receiver, endpoint: str, url: str, workdir: Path) -> None:
    """Runs the traced admin client against ``url`` and checks that its CreateToken continues
    into the controller's server span and the Raft write under it, and that a refused request
    is a span too."""
    script = workdir / "admin.py"
    script.write_text(textwrap.dedent(ADMIN_CLIENT))
    done = subprocess.run([sys.executable, str(script), endpoint, url, TOKEN],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "refused"
    method = "rebeam.v1.ClusterService/CreateToken"
    clients = [s for s in rec.snapshot() if s.service == "test-client" and s.name == method]
    assert len(clients) == 1, rec.snapshot()
    root = clients[0]
    assert root.parent == "" and root.kind == 3  # SPAN_KIND_CLIENT

    def controller_spans() -> list[Received] | None:
        spans = [s for s in rec.snapshot()
                 if s.trace_id == root.trace_id and s.service == "rebeam-controller"]
        return spans if {s.name for s in spans} >= {method, "raft.write"} else None

    found = wait_for("the controller's spans of the client's trace", controller_spans,
                     on_timeout=lambda: "\n".join(map(str, rec.snapshot())))
    assert isinstance(found, list)
    refused = wait_for("the refused request's span", lambda: [
        s for s in rec.snapshot() if s.service == "rebeam-controller"
        and s.name == "rebeam.v1.ClusterService/ListNames"])
    assert isinstance(refused, list)

    # The controller's server span continues the client's; the Raft write is its child.
    [server] = [s for s in found if s.name == method]
    assert server.kind == 2 and server.parent == root.span_id, server  # SPAN_KIND_SERVER
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["rpc.method"] == "CreateToken"
    [write] = [s for s in found if s.name == "raft.write"]
    assert write.parent == server.span_id, write
    assert write.attributes["rebeam.command"] == "IssueToken"
    # A refused request is a span too, with its status (16: UNAUTHENTICATED), in the trace
    # of the client's span for it.
    [denied] = refused
    assert denied.attributes["rpc.grpc.status_code"] == 16, denied
    assert denied.trace_id != root.trace_id and denied.parent != ""


def test_an_admin_call_continues_into_the_controller_and_its_raft_write(
        receiver: tuple[Receiver, str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec, endpoint = receiver
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    controllers = Cluster.create(workdir / "controllers", 1, ["--otlp-endpoint", endpoint])
    try:
        controllers.start()
        _admin_trace(rec, endpoint, controllers.url, workdir)
    finally:
        controllers.stop()


def test_a_dev_nodes_embedded_controller_exports_its_spans(
        receiver: tuple[Receiver, str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec, endpoint = receiver
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    dev = DevNode("dev", workdir / "dev", "", extra=["--otlp-endpoint", endpoint]).start()
    try:
        _admin_trace(rec, endpoint, dev.url, workdir)
    finally:
        dev.stop()
    # The node's own spans keep their service; the controller's carry its member id.
    controller = [s for s in rec.snapshot() if s.service == "rebeam-controller"]
    assert controller and not any(s.node for s in controller), controller


def test_a_lease_expiry_is_a_root_raft_write_span(
        receiver: tuple[Receiver, str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write no request made (the lease task declaring a silent node dead, which moves its
    children) is the root of a trace of its own, so an operator sees it."""
    rec, endpoint = receiver
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    controllers = Cluster.create(workdir / "controllers", 1, ["--otlp-endpoint", endpoint])
    nodes = Nodes(workdir, "")
    try:
        controllers.start()
        nodes.controllers = controllers.members[0].api
        doomed = nodes.start("doomed")
        with controllers.client() as client:
            wait_for("the node to join", lambda: any(
                n.id == "doomed" and n.status == "alive" for n in client.nodes()))
        doomed.kill9()

        def declared() -> list[Received]:
            return [s for s in rec.snapshot() if s.service == "rebeam-controller"
                    and s.name == "raft.write" and s.attributes.get("rebeam.command") == "DeclareDead"]

        found = wait_for("the DeclareDead write's span", declared,
                         on_timeout=lambda: "\n".join(map(str, rec.snapshot())))
        assert isinstance(found, list)
    finally:
        nodes.stop()
        controllers.stop()
    [write] = found
    assert write.parent == "", write
    assert write.attributes["rebeam.node"] == "doomed", write
    assert write.attributes["rebeam.reason"] == "lease expired", write


def test_a_rest_request_is_a_server_span_continuing_the_callers_trace(
        receiver: tuple[Receiver, str], workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request to the HTTP server is a server span named by its method and route, a
    child of the caller's W3C ``traceparent``, with its status; what the handler writes
    through Raft is a child of it."""
    from dashboard import request

    rec, endpoint = receiver
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    controllers = Cluster.create(workdir / "controllers", 1, ["--otlp-endpoint", endpoint])
    try:
        controllers.start()
        http = f"http://{controllers.members[0].http}"

        def serving() -> bool:
            try:
                return request(f"{http}/healthz", token=None)[0] == 200
            except OSError:
                return False

        wait_for("the HTTP server", serving)
        trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        parent = {"traceparent": f"00-{trace_id}-{caller}-01"}
        assert request(f"{http}/api/v1/cluster", headers=parent)[0] == 200
        # An unknown app: the handler still proposes the stop, which the state refuses.
        assert request(f"{http}/api/v1/apps/no-such-app/stop", method="POST",
                       headers=parent)[0] == 404
        assert request(f"{http}/api/v1/cluster", token="wrong")[0] == 401

        def spans() -> list[Received] | None:
            got = [s for s in rec.snapshot() if s.service == "rebeam-controller"]
            names = {s.name for s in got}
            wanted = {"GET /api/v1/cluster", "POST /api/v1/apps/{name}/stop", "raft.write"}
            return got if wanted <= names and len(
                [s for s in got if s.name == "GET /api/v1/cluster"]) == 2 else None

        found = wait_for("the HTTP requests' spans", spans,
                         on_timeout=lambda: "\n".join(map(str, rec.snapshot())))
        assert isinstance(found, list)
        cluster = [s for s in found if s.name == "GET /api/v1/cluster"]
        [traced] = [s for s in cluster if s.trace_id == trace_id]
        assert traced.kind == 2 and traced.parent == caller, traced  # SPAN_KIND_SERVER
        assert traced.attributes["http.request.method"] == "GET"
        assert traced.attributes["http.route"] == "/api/v1/cluster"
        assert traced.attributes["http.response.status_code"] == 200
        # Without a traceparent (and refused by the auth guard) it is a trace of its own.
        [refused] = [s for s in cluster if s.trace_id != trace_id]
        assert refused.parent == "" and refused.attributes["http.response.status_code"] == 401
        [stop] = [s for s in found if s.name == "POST /api/v1/apps/{name}/stop"]
        assert stop.trace_id == trace_id and stop.parent == caller, stop
        assert stop.attributes["http.response.status_code"] == 404
        assert stop.attributes["url.path"] == "/api/v1/apps/no-such-app/stop"
        writes = [s for s in found if s.name == "raft.write" and s.parent == stop.span_id]
        assert writes and writes[0].attributes["rebeam.command"] == "StopApp", found
    finally:
        controllers.stop()
