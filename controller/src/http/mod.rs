//! The controller's HTTP side: the REST API, metrics, live events and the dashboard, served
//! by axum beside (never inside) the gRPC services.

pub mod api;
pub mod live;
pub mod logs;
pub mod member;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod pages;
pub mod stuck;

/// The HTTP pieces nodes share (listener, auth guard, health, Prometheus text) live in
/// `rebeam-http`; re-exported so the controller's own modules name them as before.
pub use rebeam_http::{auth, health, prom, tls, HttpConn, HttpListener};
