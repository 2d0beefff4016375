//! What a node shows of itself over HTTP: probes now; metrics and the process API build on
//! it. Kept apart from the runtime so the message path only bumps counters.

pub mod http;
pub mod metrics;
pub mod stats;
pub mod trace;
