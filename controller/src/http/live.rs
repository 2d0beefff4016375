//! What makes the dashboard live without Prometheus: a bounded in-memory time series of
//! the controller's rates, and a server-sent-event stream telling pages when to refresh.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

use crate::core::Core;
use crate::http::metrics::HttpStats;

/// Samples kept: ten minutes at one a second.
pub const MAX_SAMPLES: usize = 600;
/// How often a sample is taken and the stream ticks.
pub const PERIOD: Duration = Duration::from_secs(1);

/// One second of the cluster.
#[derive(Clone, Serialize)]
pub struct Sample {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// Raft entries applied per second.
    pub commits_per_s: f64,
    /// Events journalled per second.
    pub events_per_s: f64,
    /// Top-level restarts in that second.
    pub restarts: u64,
    /// HTTP requests per second.
    pub http_per_s: f64,
    /// Live nodes.
    pub nodes_alive: u64,
}

/// The bounded series.
#[derive(Default)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
}

impl Series {
    /// The kept samples, oldest first.
    pub fn all(&self) -> Vec<Sample> {
        self.samples.lock().iter().cloned().collect()
    }
}

fn counts(core: &Core) -> (u64, u64, u64, u64) {
    let a = core.shared.applied.read();
    let s = &a.state;
    let restarts = s
        .journal
        .entries
        .iter()
        .filter(|e| e.kind == "restart")
        .count() as u64;
    (
        a.last_applied.map(|l| l.index).unwrap_or(0),
        s.journal.next_seq,
        restarts,
        s.nodes.values().filter(|n| n.alive).count() as u64,
    )
}

/// Samples every [`PERIOD`] for as long as the process runs.
pub async fn sample(core: Arc<Core>, stats: Arc<HttpStats>, series: Arc<Series>) {
    let mut tick = tokio::time::interval(PERIOD);
    let (mut applied, mut seq, mut restarts, _) = counts(&core);
    let mut http = stats.total();
    loop {
        tick.tick().await;
        let (a, s, r, alive) = counts(&core);
        let h = stats.total();
        let secs = PERIOD.as_secs_f64();
        let sample = Sample {
            at_ms: crate::http::api::now_ms(),
            commits_per_s: a.saturating_sub(applied) as f64 / secs,
            events_per_s: s.saturating_sub(seq) as f64 / secs,
            restarts: r.saturating_sub(restarts),
            http_per_s: h.saturating_sub(http) as f64 / secs,
            nodes_alive: alive,
        };
        (applied, seq, restarts, http) = (a, s, r, h);
        let mut q = series.samples.lock();
        q.push_back(sample);
        while q.len() > MAX_SAMPLES {
            q.pop_front();
        }
    }
}

/// `/api/v1/series`: the kept samples.
pub async fn series(State(series): State<Arc<Series>>) -> Json<Value> {
    Json(json!({ "period_ms": PERIOD.as_millis() as u64, "samples": series.all() }))
}

/// `/api/v1/stream`: a `tick` event whenever the applied state moved (at most every 250 ms),
/// carrying the journal's next sequence number; pages refetch what they show.
pub async fn stream(
    State(core): State<Arc<Core>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let s = futures::stream::unfold((core, None::<(u64, u64)>), |(core, last)| async move {
        loop {
            let now = {
                let a = core.shared.applied.read();
                (
                    a.last_applied.map(|l| l.index).unwrap_or(0),
                    a.state.journal.next_seq,
                )
            };
            if last != Some(now) {
                let ev = Event::default()
                    .event("tick")
                    .data(json!({"applied": now.0, "next_seq": now.1}).to_string());
                return Some((Ok(ev), (core, Some(now))));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}
