//! W3C trace context on the wire: one formatter and parser of `traceparent` for every party
//! (controller, node, peer frames), so a trace crosses them all the same way; and the one
//! set-up of the OTLP span export they all use.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// W3C `traceparent` (version 00) of a span context.
pub fn traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// Parses a W3C `traceparent`; `None` when malformed or all-zero.
pub fn parse_traceparent(header: &str) -> Option<SpanContext> {
    let mut parts = header.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    // Version 00 has exactly four fields; later versions may append more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let cx = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1),
        true,
        TraceState::default(),
    );
    cx.is_valid().then_some(cx)
}

/// Errors setting up the export of spans.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The endpoint or exporter settings were refused.
    #[error("cannot set up the OTLP exporter for {endpoint}: {cause}; check --otlp-endpoint")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// Why.
        cause: String,
    },
    /// A ratio outside 0..=1.
    #[error("the trace sample ratio must be between 0 and 1, not {0}; fix --trace-sample-ratio")]
    Ratio(f64),
}

/// A tracer provider exporting in batches over OTLP/gRPC to `endpoint` (`http://host:4317`),
/// as `service` unless `OTEL_SERVICE_NAME` names one, with `attributes` on its resource (who
/// exported the span). `ratio` keeps that fraction of new traces (parent-based: a span in a
/// kept trace is kept); `None` leaves it to `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`.
/// Call inside a tokio runtime: the exporter's channel runs on it.
pub fn tracer_provider(
    endpoint: &str,
    service: &'static str,
    attributes: impl IntoIterator<Item = KeyValue>,
    ratio: Option<f64>,
) -> Result<SdkTracerProvider, TraceError> {
    if let Some(r) = ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(TraceError::Ratio(r));
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_string())
        .build()
        .map_err(|e| TraceError::Exporter {
            endpoint: endpoint.to_string(),
            cause: e.to_string(),
        })?;
    let mut resource = Resource::builder().with_attributes(attributes);
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if let Some(r) = ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            r,
        ))));
    }
    Ok(builder.build())
}
