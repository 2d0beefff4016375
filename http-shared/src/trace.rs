//! A server span per HTTP request (the dashboard and the REST API), a child of the caller's
//! W3C `traceparent` and current while the handler runs (so what the handler does, a Raft
//! write or a call to a node, joins the request's trace), exported by the binary's own OTLP
//! set-up (`rebeam_grpc::tracecontext::tracer_provider`).

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Tracer;

/// The tracer requests get spans from: `None` while tracing is off (a request then costs
/// one call of it).
pub type TracerSource = fn() -> Option<&'static Tracer>;

/// The middleware: wraps each request in a server span named `METHOD route` (the route
/// pattern, e.g. `/api/v1/processes/{pid}`, so names stay few), ended with the status.
pub async fn server_span(State(source): State<TracerSource>, req: Request, next: Next) -> Response {
    let Some(tracer) = source() else {
        return next.run(req).await;
    };
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(rebeam_grpc::tracecontext::parse_traceparent);
    let parent = match parent {
        Some(p) => Context::new().with_remote_span_context(p),
        None => Context::new(),
    };
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let name = format!("{method} {}", route.as_deref().unwrap_or("(unmatched)"));
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    if span.is_recording() {
        span.set_attribute(KeyValue::new("http.request.method", method));
        span.set_attribute(KeyValue::new("url.path", req.uri().path().to_string()));
        if let Some(route) = route {
            span.set_attribute(KeyValue::new("http.route", route));
        }
    }
    let cx = parent.with_span(span);
    let response = next.run(req).with_context(cx.clone()).await;
    let span = cx.span();
    let status = response.status();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    // As the HTTP conventions say: a server's span is an error for 5xx only.
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    response
}
