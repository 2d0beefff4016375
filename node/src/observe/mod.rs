//! What a node shows of itself: its HTTP server (probes, `/metrics`), its counters, and
//! OpenTelemetry traces of messages. Kept apart from the runtime so the message path only
//! bumps counters and checks whether a message carries a trace.

pub mod http;
pub mod metrics;
pub mod stats;
pub mod trace;
