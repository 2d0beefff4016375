//! `/healthz` (the process answers) and `/readyz` (it can do its job), shared by controllers
//! and nodes: each supplies its own [`Readiness`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// What `/readyz` asks: `Ok` when ready, else the reason (shown to the prober).
pub trait Readiness: Send + Sync + 'static {
    /// Ready to serve, or why not.
    fn readiness(&self) -> Result<(), String>;
}

/// The two probe routes over `ready`.
pub fn routes(ready: Arc<dyn Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(ready): State<Arc<dyn Readiness>>) -> Response {
    match ready.readiness() {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": reason})),
        )
            .into_response(),
    }
}
