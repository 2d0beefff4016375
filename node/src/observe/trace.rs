//! OpenTelemetry traces of messages: W3C trace context carried by each message (local
//! mailboxes, peer frames, gateway calls), spans for call/cast/send and for each handled
//! message, exported over OTLP/gRPC.
//!
//! Off unless `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) is given: then the message
//! path checks one `OnceLock` per send and carries no context (`Term`'s trace stays `None`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, Tracer};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use crate::python::term::Term;
use crate::runtime::{Envelope, Pid};

/// How the node traces: where spans go and which traces are kept.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The OTLP/gRPC endpoint (`http://host:4317`).
    pub endpoint: String,
    /// Fraction of new traces kept (parent-based: a message in a kept trace is kept); `None`
    /// leaves it to `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (default: all).
    pub sample_ratio: Option<f64>,
    /// The node's name, a resource attribute of every span.
    pub node: String,
}

/// The trace context a message carries from one hop to the next.
#[derive(Debug, Clone)]
pub struct Carried {
    /// The span the message was sent in (its handler's span becomes a child of it).
    pub cx: SpanContext,
    /// When it entered this node's mailbox path, for the mailbox wait time.
    pub queued: Instant,
}

/// A message's trace: `None` when tracing is off (one null pointer in the message).
pub type MessageTrace = Option<Box<Carried>>;

struct Tracing {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();
/// True when the OpenTelemetry Python API is importable in this node: handlers then see the
/// message's span as their current span.
static PY_OTEL: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The span of the message being handled on this thread (parent of what it sends).
    static CURRENT: RefCell<Option<SpanContext>> = const { RefCell::new(None) };
}

pub use rebeam_grpc::tracecontext::TraceError;

/// The tracer, while tracing is on (the HTTP server's request spans come from it).
pub fn tracer() -> Option<&'static Tracer> {
    TRACING.get().map(|t| &t.tracer)
}

/// Turns tracing on: builds the OTLP exporter (on `tokio`, which tonic needs) and the
/// sampler. Call once, before messages flow.
pub fn init(tokio: &tokio::runtime::Handle, config: &TraceConfig) -> Result<(), TraceError> {
    let _entered = tokio.enter();
    let provider = rebeam_grpc::tracecontext::tracer_provider(
        &config.endpoint,
        "rebeam-node",
        [KeyValue::new("rebeam.node", config.node.clone())],
        config.sample_ratio,
    )?;
    let tracer = provider.tracer("rebeam");
    let _ = TRACING.set(Tracing { provider, tracer });
    Ok(())
}

/// Sets up the OpenTelemetry Python API in the node's interpreter (its SDK exporting to the
/// same endpoint, when installed and the app set none): a span a handler starts is then a
/// child of the message's span. Without the `opentelemetry` package, Rust spans still flow.
pub fn init_python(py: Python<'_>, config: &TraceConfig) {
    let result = py.import("rebeam._tracing").and_then(|m| {
        m.call_method1(
            "setup",
            (
                config.endpoint.as_str(),
                config.node.as_str(),
                config.sample_ratio,
            ),
        )?
        .extract::<bool>()
    });
    match result {
        Ok(on) => PY_OTEL.store(on, Ordering::Release),
        Err(err) => tracing::warn!("the OpenTelemetry Python API is not set up: {err}"),
    }
}

/// Exports what is buffered, the Python SDK's spans too (before the process exits).
pub fn flush() {
    let Some(t) = TRACING.get() else { return };
    if PY_OTEL.load(Ordering::Acquire) {
        Python::attach(|py| {
            if let Err(err) = py
                .import("rebeam._tracing")
                .and_then(|m| m.call_method0("flush"))
            {
                tracing::warn!("flushing Python spans failed: {err}");
            }
        });
    }
    let _ = t.provider.force_flush();
}

/// True when tracing is on.
#[inline]
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// What kind of message a span is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A raw `send` (the receiver's `handle_info`).
    Send,
    /// A `cast`.
    Cast,
    /// A `call`.
    Call,
}

impl Delivery {
    fn sent(self) -> &'static str {
        match self {
            Delivery::Send => "send",
            Delivery::Cast => "cast",
            Delivery::Call => "call",
        }
    }

    fn handled(self) -> &'static str {
        match self {
            Delivery::Send => "handle_info",
            Delivery::Cast => "handle_cast",
            Delivery::Call => "handle_call",
        }
    }
}

/// A span around the sending side of a message; for a call it lasts until the reply.
pub struct Sending {
    span: Span,
}

impl Sending {
    /// Ends the span; `error` marks a call that failed (exit, timeout).
    pub fn end(mut self, error: Option<&str>) {
        if let Some(e) = error {
            self.span.set_status(Status::error(e.to_string()));
        }
        self.span.end();
    }
}

/// Stamps a message about to be sent from this thread: starts its span and makes the term
/// carry the span's context. A send or cast span ends when dropped (at once); a call span is
/// kept by the caller until the reply. Costs one check when tracing is off, and the term is
/// changed in place: moving it through a return value costs every send a stalled copy.
#[inline]
pub fn stamp(py: Python<'_>, kind: Delivery, to: Pid, term: &mut Term) -> Option<Sending> {
    if !enabled() {
        return None;
    }
    let (span, carried) = sending(py, kind, to)?;
    term.carry(carried);
    Some(span)
}

/// Records a call made by process code: its latency when timed (see `stats::call_clock`),
/// and its span (if traced) ended with the call's outcome.
pub fn call_done<T>(started: Option<Instant>, span: Option<Sending>, outcome: &PyResult<T>) {
    if let Some(started) = started {
        super::stats::CALL_LATENCY.observe(started.elapsed());
    }
    if let Some(span) = span {
        let error = outcome.as_ref().err().map(|e| e.to_string());
        span.end(error.as_deref());
    }
}

/// Starts the span of a message sent from this thread to `to` (its parent: the Python
/// API's current span, else the message being handled here); returns it and the context
/// the message carries. `None` when tracing is off.
pub fn sending(py: Python<'_>, kind: Delivery, to: Pid) -> Option<(Sending, MessageTrace)> {
    let tracing = TRACING.get()?;
    let handled = CURRENT.with(|c| c.borrow().clone());
    let parent = match handled {
        // In a trace that is not sampled nothing is recorded: no need to ask Python for a
        // more precise parent.
        Some(cx) if !cx.is_sampled() => Some(cx),
        handled => python_current(py).or(handled),
    };
    Some(start_sending(tracing, kind, to, parent, SpanKind::Producer))
}

/// The same for a message entering through the gateway, whose parent comes from the
/// client's `traceparent` metadata.
pub fn entering(
    kind: Delivery,
    to: Pid,
    traceparent: Option<&str>,
) -> Option<(Sending, MessageTrace)> {
    let tracing = TRACING.get()?;
    let parent = traceparent.and_then(parse_traceparent);
    Some(start_sending(tracing, kind, to, parent, SpanKind::Server))
}

fn start_sending(
    tracing: &Tracing,
    kind: Delivery,
    to: Pid,
    parent: Option<SpanContext>,
    span_kind: SpanKind,
) -> (Sending, MessageTrace) {
    let span_kind = if kind == Delivery::Call && span_kind == SpanKind::Producer {
        SpanKind::Client
    } else {
        span_kind
    };
    let cx = match parent {
        Some(p) => Context::new().with_remote_span_context(p),
        None => Context::new(),
    };
    let mut span = tracing
        .tracer
        .span_builder(kind.sent())
        .with_kind(span_kind)
        .start_with_context(&tracing.tracer, &cx);
    if span.is_recording() {
        span.set_attribute(KeyValue::new("rebeam.to", to.to_string()));
    }
    let carried = Box::new(Carried {
        cx: span.span_context().clone(),
        queued: Instant::now(),
    });
    (Sending { span }, Some(carried))
}

/// The trace a message from another node carries (`traceparent` of its frame); `None` when
/// tracing is off here or the frame has none.
pub fn from_wire(traceparent: &str) -> MessageTrace {
    if traceparent.is_empty() || !enabled() {
        return None;
    }
    parse_traceparent(traceparent).map(|cx| {
        Box::new(Carried {
            cx,
            queued: Instant::now(),
        })
    })
}

/// The `traceparent` to put on a peer frame (empty without a trace).
pub fn to_wire(trace: Option<&Carried>) -> String {
    trace.map(|t| traceparent(&t.cx)).unwrap_or_default()
}

// One parser and formatter of W3C `traceparent` for the whole project.
pub use rebeam_grpc::tracecontext::{parse_traceparent, traceparent};

/// Starts the span of `process` handling `envelope`, when the message carries a trace.
#[inline]
pub fn handling(py: Python<'_>, envelope: &Envelope<Term>, process: Pid) -> Option<Handling> {
    let (term, kind) = match envelope {
        Envelope::Info(m) => (m, Delivery::Send),
        Envelope::Cast(m) => (m, Delivery::Cast),
        Envelope::Call { request, .. } => (request, Delivery::Call),
        _ => return None,
    };
    Handling::begin(py, term.trace()?, kind, process)
}

/// The span of one handled message; while it lives, it is the current span of the thread
/// (and of the Python API), so what the handler sends and the spans it starts are children.
pub struct Handling {
    span: Span,
    previous: Option<SpanContext>,
    token: Option<Py<PyAny>>,
}

impl Handling {
    /// Starts the span of `process` handling a message of `kind` that carries `trace`.
    pub fn begin(py: Python<'_>, trace: &Carried, kind: Delivery, process: Pid) -> Option<Self> {
        let tracing = TRACING.get()?;
        let now = Instant::now();
        let waited = now.saturating_duration_since(trace.queued);
        let parent = Context::new().with_remote_span_context(trace.cx.clone());
        let mut span = tracing
            .tracer
            .span_builder(kind.handled())
            .with_kind(SpanKind::Consumer)
            .start_with_context(&tracing.tracer, &parent);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("rebeam.pid", process.to_string()));
            span.set_attribute(KeyValue::new(
                "rebeam.mailbox_wait_us",
                waited.as_micros() as i64,
            ));
        }
        let cx = span.span_context().clone();
        let token = if PY_OTEL.load(Ordering::Acquire) {
            python_enter(py, &cx)
        } else {
            None
        };
        let previous = CURRENT.with(|c| c.borrow_mut().replace(cx));
        Some(Handling {
            span,
            previous,
            token,
        })
    }

    /// Ends the span; `error` is the crash the handler raised, if any.
    pub fn end(mut self, py: Python<'_>, error: Option<String>) {
        if let Some(token) = self.token.take() {
            if let Ok(f) = tracing_fn(py, "leave") {
                let _ = f.call1((token,));
            }
        }
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
        if let Some(e) = error {
            self.span.set_status(Status::error(e));
        }
        self.span.end();
    }
}

fn tracing_fn<'py>(py: Python<'py>, name: &'static str) -> PyResult<&'py Bound<'py, PyAny>> {
    static ENTER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static LEAVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static CURRENT_FN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static UNSAMPLED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let cell = match name {
        "enter" => &ENTER,
        "enter_unsampled" => &UNSAMPLED,
        "leave" => &LEAVE,
        _ => &CURRENT_FN,
    };
    cell.import(py, "rebeam._tracing", name)
}

/// Makes `cx` the Python API's current span; the token undoes it.
fn python_enter(py: Python<'_>, cx: &SpanContext) -> Option<Py<PyAny>> {
    let result = if cx.is_sampled() {
        let trace_id = u128::from_be_bytes(cx.trace_id().to_bytes());
        let span_id = u64::from_be_bytes(cx.span_id().to_bytes());
        tracing_fn(py, "enter").and_then(|f| f.call1((trace_id, span_id, 1u8)))
    } else {
        // One shared not-sampled context: a handler's spans follow the message's decision.
        tracing_fn(py, "enter_unsampled").and_then(|f| f.call0())
    };
    match result {
        Ok(token) => Some(token.unbind()),
        Err(err) => {
            tracing::debug!("entering the message's trace context in Python failed: {err}");
            None
        }
    }
}

/// The Python API's current span context, when the API is set up and a span is current.
fn python_current(py: Python<'_>) -> Option<SpanContext> {
    if !PY_OTEL.load(Ordering::Acquire) {
        return None;
    }
    let current = tracing_fn(py, "current").and_then(|f| f.call0()).ok()?;
    let tuple = current.cast::<PyTuple>().ok()?;
    let (trace_id, span_id, flags): (u128, u64, u8) = tuple.extract().ok()?;
    let cx = SpanContext::new(
        TraceId::from_bytes(trace_id.to_be_bytes()),
        opentelemetry::trace::SpanId::from_bytes(span_id.to_be_bytes()),
        TraceFlags::new(flags),
        false,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}
