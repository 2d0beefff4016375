//! OpenTelemetry traces of a controller member: a server span per gRPC request on the API
//! listener (continuing the caller's W3C `traceparent`) and a child span per Raft write the
//! request proposes, exported over OTLP/gRPC like the nodes' spans.
//!
//! A write no request made (the lease task declaring a node dead) is a root `raft.write`
//! span of its own.
//!
//! Off unless `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is given: then a request
//! costs one `OnceLock` check. Node heartbeats without a `traceparent` get no span (a node
//! renews several times a second; such spans would bury everything else).

use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context as TaskContext, Poll};

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, Tracer};
use tonic::codegen::http;

use crate::types::Command;

/// How the member traces: where spans go and which traces are kept.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The OTLP/gRPC endpoint (`http://host:4317`).
    pub endpoint: String,
    /// Fraction of new traces kept (parent-based: a request in a kept trace is kept); `None`
    /// leaves it to `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (default: all).
    pub sample_ratio: Option<f64>,
    /// This member's Raft id, a resource attribute of every span.
    pub member: u64,
}

pub use rebeam_grpc::tracecontext::TraceError;

/// The tracer, while tracing is on (the HTTP server's request spans come from it).
pub fn tracer() -> Option<&'static Tracer> {
    TRACING.get().map(|t| &t.tracer)
}

struct Tracing {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Turns tracing on: builds the OTLP exporter and the sampler. Call once, inside the tokio
/// runtime (tonic's channel runs on it), before serving.
pub fn init(config: &TraceConfig) -> Result<(), TraceError> {
    let provider = rebeam_grpc::tracecontext::tracer_provider(
        &config.endpoint,
        "rebeam-controller",
        [KeyValue::new("rebeam.controller", config.member as i64)],
        config.sample_ratio,
    )?;
    let tracer = provider.tracer("rebeam-controller");
    let _ = TRACING.set(Tracing { provider, tracer });
    Ok(())
}

/// Exports what is buffered (before the process exits). Blocks: call it off the runtime's
/// workers (`spawn_blocking`).
pub fn flush() {
    if let Some(t) = TRACING.get() {
        if let Err(e) = t.provider.force_flush() {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }
}

/// True when tracing is on.
#[inline]
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

pub use rebeam_grpc::tracecontext::{parse_traceparent, traceparent};

/// The gRPC path a periodic request without a trace takes; it gets no span.
const HEARTBEAT: &str = "/rebeam.v1.NodeService/Heartbeat";

/// Wraps a gRPC service: each request gets a server span named by its method, a child of
/// the caller's `traceparent`, current while the handler runs (so its Raft writes are
/// children), ended with the gRPC status when the response starts.
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    /// Traces the requests of `inner`.
    pub fn new(inner: S) -> Self {
        Traced { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Traced<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for Traced<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(tracing) = TRACING.get() else {
            return Box::pin(self.inner.call(req));
        };
        let path = req.uri().path();
        let parent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        if parent.is_none() && path == HEARTBEAT {
            return Box::pin(self.inner.call(req));
        }
        let span = request_span(tracing, path, parent);
        let cx = Context::new().with_span(span);
        let reply = self.inner.call(req);
        Box::pin(
            async move {
                let reply = reply.await;
                let cx = Context::current();
                let span = cx.span();
                if let Ok(response) = &reply {
                    // An error is a trailers-only response: its status is in the headers.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
                    if code != 0 {
                        let message = response
                            .headers()
                            .get("grpc-message")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        span.set_status(Status::error(message));
                    }
                } else {
                    span.set_status(Status::error("the service failed"));
                }
                span.end();
                reply
            }
            .with_context(cx),
        )
    }
}

/// The server span of a request to `path` (`/package.Service/Method`).
fn request_span(tracing: &Tracing, path: &str, parent: Option<SpanContext>) -> Span {
    let parent = match parent {
        Some(p) => Context::new().with_remote_span_context(p),
        None => Context::new(),
    };
    let name = path.trim_start_matches('/').to_string();
    let mut span = tracing
        .tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .start_with_context(&tracing.tracer, &parent);
    if span.is_recording() {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        span.set_attribute(KeyValue::new("rpc.system", "grpc"));
        span.set_attribute(KeyValue::new("rpc.service", service.to_string()));
        span.set_attribute(KeyValue::new("rpc.method", method.to_string()));
    }
    span
}

/// The span of one command proposed through Raft, a child of the current span (the
/// request's) or, for a write no request made (a lease expiry declaring a node dead, which
/// moves its children elsewhere), the root of a trace of its own; ends when dropped, or
/// with the outcome through [`RaftWrite::end`].
pub struct RaftWrite(Option<Span>);

impl RaftWrite {
    /// Starts the span of proposing `cmd`; nothing when tracing is off.
    pub fn start(cmd: &Command) -> Self {
        let Some(tracing) = TRACING.get() else {
            return RaftWrite(None);
        };
        // Without a current span, `Context::current()` starts a new trace (sampled by ratio).
        let cx = Context::current();
        let mut span = tracing
            .tracer
            .span_builder("raft.write")
            .with_kind(SpanKind::Internal)
            .start_with_context(&tracing.tracer, &cx);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("rebeam.command", command_name(cmd)));
            if let Command::DeclareDead {
                node,
                incarnation,
                reason,
            } = cmd
            {
                span.set_attribute(KeyValue::new("rebeam.node", node.clone()));
                span.set_attribute(KeyValue::new("rebeam.incarnation", *incarnation as i64));
                span.set_attribute(KeyValue::new("rebeam.reason", reason.clone()));
            }
        }
        RaftWrite(Some(span))
    }

    /// Ends the span; an error marks a write that was refused or failed.
    pub fn end<T, E: fmt::Display>(self, outcome: &Result<T, E>) {
        if let Some(mut span) = self.0 {
            if let Err(e) = outcome {
                span.set_status(Status::error(e.to_string()));
            }
            span.end();
        }
    }
}

/// The variant name of `cmd` without formatting its fields (an app's code may be megabytes):
/// the writer takes the first piece of the derived `Debug` output, the name, and stops.
fn command_name(cmd: &Command) -> String {
    struct First(String);
    impl fmt::Write for First {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.push_str(s);
            Err(fmt::Error)
        }
    }
    let mut first = First(String::new());
    let _ = write!(first, "{cmd:?}");
    first.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_malformed_headers() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse_traceparent(header).expect("a valid header");
        assert!(cx.is_sampled());
        assert_eq!(traceparent(&cx), header);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_command_is_named_without_its_fields() {
        let cmd = Command::RevokeToken {
            id: "secret-id".into(),
        };
        assert_eq!(command_name(&cmd), "RevokeToken");
    }
}
