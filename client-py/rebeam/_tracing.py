"""OpenTelemetry glue, used only when the ``opentelemetry`` package is installed.

Inside a node (called by the runtime): the span of the message being handled is made the
current span of the OpenTelemetry Python API, so a span a handler starts is its child, and what
the handler sends carries the current span's context. In the client: each call, cast or send
gets a client span whose W3C ``traceparent`` goes to the gateway as gRPC metadata, and each
request to the controller one whose ``traceparent`` goes to the controller."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

_log = logging.getLogger("rebeam.tracing")


def setup(endpoint: str, node: str, sample_ratio: float | None) -> bool:
    """Sets up the Python API for a traced node; True when the API is importable. When the
    app set no tracer provider and the SDK and its OTLP/gRPC exporter are installed, spans
    started in handlers are exported to ``endpoint`` as the node's own are."""
    try:
        from opentelemetry import trace
    except ImportError:
        return False
    if not _has_provider(trace):
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as e:
            _log.warning("handler spans are not exported: %s (install opentelemetry-sdk and "
                         "opentelemetry-exporter-otlp-proto-grpc)", e)
            _load()
            return True
        attributes = {"rebeam.node": node}
        resource = Resource.create(attributes)
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource.create({"service.name": "rebeam-node"}))
        kwargs: dict[str, Any] = {"resource": resource}
        if sample_ratio is not None:
            kwargs["sampler"] = ParentBased(TraceIdRatioBased(sample_ratio))
        provider = TracerProvider(**kwargs)
        insecure = not endpoint.startswith("https://")
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
        trace.set_tracer_provider(provider)
    _load()
    return True


def _has_provider(trace: Any) -> bool:
    """True when the app already installed a tracer provider (not the API's proxy)."""
    return type(trace.get_tracer_provider()).__name__ not in ("ProxyTracerProvider",
                                                              "NoOpTracerProvider")


class _Glue:
    """The API's pieces the runtime uses per message, looked up once by :func:`setup`."""

    def __init__(self) -> None:
        from opentelemetry import context, trace

        self.attach = context.attach
        self.detach = context.detach
        self.span_context = trace.SpanContext
        self.non_recording = trace.NonRecordingSpan
        self.in_context = trace.set_span_in_context
        self.current_span = trace.get_current_span
        self.flags = (trace.TraceFlags(0), trace.TraceFlags(1))
        # The context of every message in a trace that is not sampled: what a handler starts
        # there is not sampled either (parent-based), and building one per message is spared.
        self.unsampled = self.in_context(self.non_recording(self.span_context(
            trace_id=1, span_id=1, is_remote=True, trace_flags=self.flags[0])))


_glue: _Glue | None = None


def enter(trace_id: int, span_id: int, flags: int) -> object:
    """Makes the message's span current for the handler about to run; returns the token."""
    g = _glue or _load()
    span = g.non_recording(g.span_context(trace_id, span_id, True, g.flags[flags & 1]))
    return g.attach(g.in_context(span))


def enter_unsampled() -> object:
    """Makes a not-sampled span current for a handler of a message in a not-sampled trace."""
    g = _glue or _load()
    return g.attach(g.unsampled)


def leave(token: object) -> None:
    """Restores the context from before :func:`enter`."""
    g = _glue or _load()
    g.detach(token)  # type: ignore[arg-type]


def current() -> tuple[int, int, int] | None:
    """The current span's (trace id, span id, flags), or None when no valid span is current."""
    g = _glue or _load()
    cx = g.current_span().get_span_context()
    if not cx.is_valid:
        return None
    return cx.trace_id, cx.span_id, int(cx.trace_flags)


def _load() -> _Glue:
    global _glue
    _glue = _Glue()
    return _glue


def flush(timeout_ms: int = 5000) -> None:
    """Exports what the Python SDK still buffers (before the node exits)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if force_flush is not None:
        force_flush(timeout_ms)


_API: tuple[Any, Any] | None | bool = False


def _api() -> tuple[Any, Any] | None:
    """The API's ``propagate`` and ``trace`` modules, or None without the package (looked up
    once: a failing import costs a search of sys.path each time)."""
    global _API
    if _API is False:
        try:
            from opentelemetry import propagate, trace
        except ImportError:
            _API = None
        else:
            _API = (propagate, trace)
    return _API  # type: ignore[return-value]


def client_spans_on() -> bool:
    """Whether :func:`client_span` would record or carry anything: the OpenTelemetry API is
    there, and an SDK is installed or a context is current. Without, a call from outside is
    cheap enough for the no-op span (and its context manager) to show, so callers skip it."""
    api = _api()
    if api is None:
        return False
    trace = api[1]
    return not (isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
                and not trace.get_current_span().get_span_context().is_valid)


@contextlib.contextmanager
def client_span(kind: str, target: str,
                attributes: dict[str, str] | None = None) -> Iterator[list[tuple[str, str]]]:
    """A client span named ``kind`` around one request to a gateway or a controller, with
    ``rebeam.to`` = ``target`` and ``attributes``; yields the metadata that carries its
    context (empty without the OpenTelemetry API, or when no span is recorded or current)."""
    api = _api()
    if api is None or not client_spans_on():
        yield []
        return
    propagate, trace = api
    tracer = trace.get_tracer("rebeam.client")
    with tracer.start_as_current_span(kind, kind=trace.SpanKind.CLIENT,
                                      attributes={"rebeam.to": target, **(attributes or {})}):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield sorted(carrier.items())
